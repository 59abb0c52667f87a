"""How a lakehouse sync appears in Dagster: each Postgres table it reads is an external asset,
each history and mirror Delta table an asset downstream of it, decided in one place that a user
can subclass (like `SyncedTableTranslator`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import dagster as dg

from reverse_etl_assets.orchestration import metadata as md
from reverse_etl_assets.orchestration.translator import check_after_each_update
from reverse_etl_assets.spec import LakehouseSync
from reverse_etl_assets.spec.lakehouse_syncs import HISTORY_PREFIX, HISTORY_SUFFIX

GROUP = "lakehouse_syncs"
POSTGRES_GROUP = "postgres_tables"
POSTGRES_PREFIX = "postgres"


@dataclass(frozen=True)
class LakehouseTable:
    """One Delta table a lakehouse sync writes: the history or the mirror of a Postgres table."""

    sync: LakehouseSync
    schema: str
    table: str
    kind: Literal["history", "mirror"]

    @property
    def name(self) -> str:
        """The Delta table's name under the target: `<table>` or `lb_<table>_history`."""
        if self.kind == "history":
            return f"{HISTORY_PREFIX}{self.table}{HISTORY_SUFFIX}"
        return self.table

    @property
    def uri(self) -> str:
        """Where it lands."""
        if self.kind == "history":
            return self.sync.history_uri(self.table)
        return self.sync.mirror_uri(self.table)

    @property
    def postgres_table(self) -> str:
        """`<schema>.<table>`, as status and results name the Postgres table."""
        return f"{self.schema}.{self.table}"


def lakehouse_tables(sync: LakehouseSync) -> list[LakehouseTable]:
    """The Delta tables of `sync` that are assets: history and / or mirror of each table named in
    `tables`. Tables reached through `schemas` are streamed too, but Dagster loads definitions
    without connecting to Postgres, so they are not known here."""
    found = []
    for schema, table in sync.tables:
        if sync.history:
            found.append(LakehouseTable(sync, schema, table, "history"))
        if sync.mirror:
            found.append(LakehouseTable(sync, schema, table, "mirror"))
    return found


class LakehouseSyncTranslator:
    """Maps the Delta tables of a lakehouse sync, and the Postgres tables they come from, to
    `AssetSpec`s.

    Subclass it and override `get_asset_spec` (or `get_postgres_table_spec`) to change keys,
    groups, owners, tags or automation; call `super()` and `replace_attributes` to change one
    thing.
    """

    def get_asset_spec(self, data: LakehouseTable) -> dg.AssetSpec:
        """A history or mirror: key = the target's parts + its name, depending on its table."""
        sync = data.sync
        what = "change log" if data.kind == "history" else "current-state mirror"
        return dg.AssetSpec(
            key=dg.AssetKey([*sync.target_parts, data.name]),
            deps=[self.get_postgres_table_spec(sync, data.schema, data.table).key],
            group_name=GROUP,
            kinds={"postgres", "delta"},
            description=f"Delta {what} of Postgres table {data.postgres_table}, streamed by "
            f"lakehouse sync {sync.name} ({sync.mode}) through slot {sync.slot}.",
            metadata={
                md.MODE: sync.mode,
                md.SOURCE: data.postgres_table,
                md.DELTA_TABLE: data.uri,
                md.SLOT: sync.slot,
            },
            tags={"reverse_etl/mode": sync.mode, "reverse_etl/lakehouse_sync": sync.name},
            automation_condition=self.get_automation_condition(sync),
            # A table the stream could not land (a failed table, a mirror of a table without a
            # primary key) is not materialized while the others are.
            skippable=True,
        )

    def get_postgres_table_spec(self, sync: LakehouseSync, schema: str, table: str) -> dg.AssetSpec:
        """The Postgres table a lakehouse sync reads: an external asset `postgres/<schema>/<table>`
        (the application writes it; Dagster does not materialize it)."""
        return dg.AssetSpec(
            key=dg.AssetKey([POSTGRES_PREFIX, schema, table]),
            group_name=POSTGRES_GROUP,
            kinds={"postgres"},
            description=f'Postgres table "{schema}"."{table}", read by logical replication.',
            metadata={md.POSTGRES_TABLE: f'"{schema}"."{table}"'},
        )

    def get_check_automation_condition(self, sync: LakehouseSync) -> dg.AutomationCondition | None:
        """The checks run after each drain, however it ran (a Dagster run, or the CLI recorded
        in the instance); a continuous sync's once an hour, after an update."""
        return check_after_each_update(sync.mode)

    def get_automation_condition(self, sync: LakehouseSync) -> dg.AutomationCondition | None:
        """A `schedule` drains the slot at each tick (all tables of the sync together)."""
        if not sync.schedule:
            return None
        tick = dg.AutomationCondition.cron_tick_passed(sync.schedule)
        return (tick & ~dg.AutomationCondition.in_progress()).with_label(
            f"drain on schedule {sync.schedule} (UTC)"
        )
