"""How a synced table and its Delta source appear in Dagster: keys, deps, group, kinds, owners,
tags and automation, decided in one place that a user can subclass (like dagster-dlt's)."""

from __future__ import annotations

import re

import dagster as dg

from reverse_etl_assets.orchestration import metadata as md
from reverse_etl_assets.spec import THREE_PART, SyncedTable

GROUP = "synced_tables"
SOURCE_GROUP = "delta_sources"
# Delta sources are observed once a minute (their data version is the Delta version), so a new
# commit makes its synced tables stale in the UI within a minute, without an Observe click.
OBSERVE_CRON = "* * * * *"
# A continuous table updates all the time: its equality checks run once an hour (after an update)
# rather than after every reported materialization.
CONTINUOUS_CHECK_CRON = "@hourly"


class SyncedTableTranslator:
    """Maps a synced table of the spec to the `AssetSpec` of the table and of its source.

    Subclass it and override `get_asset_spec` (or `get_source_spec`) to change keys, groups,
    owners, tags or automation; call `super()` and `replace_attributes` to change one thing.
    """

    def get_asset_spec(self, table: SyncedTable) -> dg.AssetSpec:
        """The synced (Postgres) table: key = its name split on dots, depending on its source."""
        return dg.AssetSpec(
            key=dg.AssetKey(table.asset_key_path),
            deps=[self.get_source_spec(table).key],
            group_name=GROUP,
            kinds={"delta", "postgres"},
            description=f'Postgres table "{table.pg_schema}"."{table.pg_table}" synced from '
            f"{table.source} ({table.mode}).",
            metadata={
                md.MODE: table.mode,
                md.SOURCE: table.source,
                md.POSTGRES_TABLE: postgres_table(table),
                **md.TableMetadataSet(table_name=postgres_table(table)),
            },
            tags={"reverse_etl/mode": table.mode},
            automation_condition=self.get_automation_condition(table),
        )

    def get_source_spec(self, table: SyncedTable) -> dg.AssetSpec:
        """The Delta source, observed on `OBSERVE_CRON`: its data version is its Delta version."""
        if THREE_PART.match(table.source):
            key = dg.AssetKey(table.source.split("."))
        else:
            path = re.sub(r"[^A-Za-z0-9_]+", "_", table.source).strip("_")
            key = dg.AssetKey(["delta", path])
        return dg.AssetSpec(
            key=key,
            group_name=SOURCE_GROUP,
            kinds={"delta"},
            description=f"Delta table {table.source} ({table.source_uri})",
            metadata={md.SOURCE: table.source_uri},
            automation_condition=dg.AutomationCondition.cron_tick_passed(OBSERVE_CRON).with_label(
                f"observe on {OBSERVE_CRON} (UTC)"
            ),
        )

    def get_check_automation_condition(self, table: SyncedTable) -> dg.AutomationCondition | None:
        """The equality checks run after each new sync, however it ran (a Dagster run, the CLI
        recorded in the instance), so the UI's check status always speaks of the latest sync."""
        return check_after_each_update(table.mode)

    def get_automation_condition(self, table: SyncedTable) -> dg.AutomationCondition | None:
        """A `schedule` syncs at each tick (not on_cron, which waits for the source to update:
        the sync is a no-op when nothing changed)."""
        if not table.schedule:
            return None
        tick = dg.AutomationCondition.cron_tick_passed(table.schedule)
        return (tick & ~dg.AutomationCondition.in_progress()).with_label(
            f"sync on schedule {table.schedule} (UTC)"
        )


def postgres_table(table: SyncedTable) -> str:
    """The quoted Postgres name, as a user would type it in psql."""
    return f'"{table.pg_schema}"."{table.pg_table}"'


def check_after_each_update(mode: str) -> dg.AutomationCondition:
    """A check's condition: run after each update of its asset (hourly for a continuous one).

    Like `eager()`, except that the first evaluation does not swallow what came before it
    (`make demo` syncs before `make dev` starts the daemon): a check that never ran, runs.
    """
    if mode == "continuous":
        return dg.AutomationCondition.on_cron(CONTINUOUS_CHECK_CRON)
    updated = dg.AutomationCondition.any_deps_updated() | (
        dg.AutomationCondition.missing().newly_true()
    )
    handled = dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()
    return (
        updated.since(handled)
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("check after each update")
