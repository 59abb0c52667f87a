"""What Dagster records of a lakehouse sync's run: per history and mirror, its metadata and data
version, the same whether the asset, the follower job or `reverse-etl sync` ran it.

The data version of a history or mirror is its Delta version: a synced table fed by a mirror
records the Delta version it read as its input version, so it is stale exactly when the mirror
has moved on (the closed loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

from reverse_etl_assets.delta.reader import latest_version
from reverse_etl_assets.errors import SourceMissing
from reverse_etl_assets.orchestration import events
from reverse_etl_assets.orchestration import metadata as md
from reverse_etl_assets.orchestration.lakehouse_translator import (
    LakehouseSyncTranslator,
    LakehouseTable,
    lakehouse_tables,
)
from reverse_etl_assets.pipelines.postgres_to_delta.run import LakehouseResult
from reverse_etl_assets.pipelines.postgres_to_delta.status import (
    LakehouseStatus,
    LakehouseTableStatus,
    read_lakehouse_status,
)
from reverse_etl_assets.spec import LakehouseSync

# `_pg_change_type` -> the metadata key counting it (preimages are not changes of their own).
CHANGE_KEYS = {
    "insert": md.INSERTS,
    "update_postimage": md.UPDATES,
    "delete": md.DELETES,
    "truncate": md.TRUNCATES,
}


def landed_version(table: LakehouseTable, result: LakehouseResult) -> int | None:
    """The Delta version `table` is at now, None when there is nothing to report: never
    written (a mirror of a table without a primary key) or its Postgres table failed."""
    if table.postgres_table in result.failed_tables:
        return None
    try:
        return latest_version(table.uri, storage_options=table.sync.storage_options)
    except SourceMissing:
        return None


def lakehouse_metadata(
    table: LakehouseTable, result: LakehouseResult, status: LakehouseStatus, version: int
) -> dict[str, Any]:
    """Materialization metadata of one history or mirror after `result`, from the actual state."""
    row = _table_status(table, status)
    changes = result.table_changes.get(table.postgres_table, {})
    snapshot = result.snapshot_rows.get(table.postgres_table)
    facts: dict[str, Any] = {
        md.DELTA_VERSION: version,
        md.DELTA_TABLE: table.uri,
        md.MODE: table.sync.mode,
        md.SYNC_PATH: result.path,
        md.DETAILED_STATE: row.detailed_state,
        md.SLOT: status.slot,
        md.LAST_LSN: row.last_lsn,
        md.LAG_BYTES: status.lag_bytes,
        md.LAG_SECONDS: round(status.lag_seconds, 3) if status.lag_seconds is not None else None,
        md.RETAINED_WAL_BYTES: status.retained_wal_bytes,
        **{key: changes.get(kind, 0) for kind, key in CHANGE_KEYS.items()},
        md.SNAPSHOT_ROWS: snapshot,
        md.DURATION_SECONDS: round(result.seconds, 3),
    }
    if table.kind == "mirror":
        facts.update(md.TableMetadataSet(row_count=row.rows))
    else:
        facts[md.ROWS_APPENDED] = (snapshot or 0) + sum(changes.values())
    if row.message:
        facts[md.MESSAGE] = row.message
    return {k: v for k, v in facts.items() if v is not None}


@dataclass(frozen=True)
class Landed:
    """What to record of one history or mirror after a run."""

    key: dg.AssetKey
    version: int
    metadata: dict[str, Any]


def landed_tables(
    result: LakehouseResult,
    status: LakehouseStatus,
    tables: dict[dg.AssetKey, LakehouseTable],
) -> list[Landed]:
    """Each of `tables` that holds data after `result`, with its Delta version and metadata."""
    found = []
    for key, table in tables.items():
        version = landed_version(table, result)
        if version is not None:
            found.append(Landed(key, version, lakehouse_metadata(table, result, status, version)))
    return found


def materialization(landed: Landed) -> dg.AssetMaterialization:
    """`landed` as a materialization made outside an asset step (the follower, the CLI)."""
    return dg.AssetMaterialization(
        asset_key=landed.key, metadata=landed.metadata, tags=version_tags(landed.version)
    )


def report_lakehouse_sync(
    instance: dg.DagsterInstance,
    sync: LakehouseSync,
    result: LakehouseResult,
    status: LakehouseStatus,
    *,
    translator: LakehouseSyncTranslator | None = None,
) -> None:
    """Record a run outside any Dagster run (the CLI) in `instance`, as a run would."""
    translator = translator or LakehouseSyncTranslator()
    tables = {translator.get_asset_spec(t).key: t for t in lakehouse_tables(sync)}
    for landed in landed_tables(result, status, tables):
        instance.report_runless_asset_event(materialization(landed))


def version_tags(version: int) -> dict[str, str]:
    """The data version tags of a materialization made outside a Dagster run."""
    return {
        events.DATA_VERSION_TAG: str(version),
        events.USER_PROVIDED_TAG: "true",
        events.CODE_VERSION_TAG: events.OUTSIDE_RUN_CODE_VERSION,
    }


def record_cli_lakehouse_sync(sync: LakehouseSync, result: LakehouseResult, dsn: str) -> None:
    """Record a `reverse-etl sync` of a lakehouse sync in the instance DAGSTER_HOME names."""
    with dg.DagsterInstance.get() as instance:
        report_lakehouse_sync(instance, sync, result, read_lakehouse_status(sync, dsn))


def _table_status(table: LakehouseTable, status: LakehouseStatus) -> LakehouseTableStatus:
    for row in status.tables:
        if row.table == table.postgres_table:
            return row
    raise KeyError(f"lakehouse sync {status.name!r} has no table {table.postgres_table}")
