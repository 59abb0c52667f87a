"""What Dagster records of one sync: metadata, data version and provenance, the same whether the
asset, the continuous follower or `reverse-etl sync` (into a configured instance) ran it.

The data version of a synced table is the Delta version it holds, and its provenance names the
source version it consumed, so the table is fresh exactly while its source has not moved on.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from reverse_etl_assets.orchestration import metadata as md
from reverse_etl_assets.orchestration.translator import SyncedTableTranslator, postgres_table
from reverse_etl_assets.pipelines.delta_to_postgres.result import SyncResult
from reverse_etl_assets.pipelines.delta_to_postgres.status import TableStatus, read_table_status
from reverse_etl_assets.postgres import catalog
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.spec import SyncedTable

# Dagster's provenance tags (dagster._core.definitions.data_version): set by us because Dagster
# would record the source's last *observation*, not the Delta version the sync actually read.
DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"
INPUT_DATA_VERSION_PREFIX = "dagster/input_data_version/"
INPUT_EVENT_POINTER_PREFIX = "dagster/input_event_pointer/"
NULL_EVENT_POINTER = "NULL"
USER_PROVIDED_TAG = "dagster/data_version_is_user_provided"
# The code version recorded by syncs run outside a Dagster run (the CLI, the follower).
OUTSIDE_RUN_CODE_VERSION = "reverse_etl"


def sync_metadata(
    table: SyncedTable,
    result: SyncResult,
    status: TableStatus,
    columns: dict[str, str],
) -> dict[str, Any]:
    """Materialization metadata: Dagster's table facts plus ours, read from the actual state."""
    facts: dict[str, Any] = {
        **md.TableMetadataSet(
            row_count=result.rows,
            table_name=postgres_table(table),
            column_schema=dg.TableSchema(
                columns=[dg.TableColumn(name, pg_type) for name, pg_type in columns.items()]
            )
            if columns
            else None,
        ),
        md.POSTGRES_TABLE: postgres_table(table),
        md.DELTA_VERSION: result.version,
        md.MODE: table.mode,
        md.SYNC_PATH: result.path,
        md.ROWS_PER_SECOND: round(result.rows_per_second, 1),
        md.DURATION_SECONDS: round(result.seconds, 3),
        md.SKIPPED_NULL_KEYS: result.skipped_null_keys,
        md.CHANGES: result.changes,
        md.DETAILED_STATE: status.detailed_state,
    }
    if status.lag_versions is not None:
        facts[md.LAG_VERSIONS] = status.lag_versions
    if status.message:
        facts[md.MESSAGE] = status.message
    if result.reason:
        facts[md.REASON] = result.reason
    if result.estimates:
        facts[md.ESTIMATED_SECONDS] = dict(result.estimates)
    return {k: v for k, v in facts.items() if v is not None}


def consumed_tags(source_key: dg.AssetKey, version: int) -> dict[str, str]:
    """Tags saying the materialization holds Delta `version` of `source_key`."""
    return {
        DATA_VERSION_TAG: str(version),
        USER_PROVIDED_TAG: "true",
        INPUT_DATA_VERSION_PREFIX + source_key.to_user_string(): str(version),
    }


def outside_run_tags(source_key: dg.AssetKey, version: int) -> dict[str, str]:
    """`consumed_tags` plus the provenance a Dagster run would have added itself."""
    return {
        **consumed_tags(source_key, version),
        CODE_VERSION_TAG: OUTSIDE_RUN_CODE_VERSION,
        INPUT_EVENT_POINTER_PREFIX + source_key.to_user_string(): NULL_EVENT_POINTER,
    }


def source_observation(
    instance: dg.DagsterInstance, source_key: dg.AssetKey, version: int
) -> dg.AssetObservation | None:
    """An observation of the source at `version` when the instance last saw an older one (or
    none): a sync that read a version before the observer did must not look stale.

    None for a source Dagster materializes (a lakehouse mirror: the closed loop), whose data
    version comes from its own materializations.
    """
    if instance.fetch_materializations(source_key, limit=1).records:
        return None
    records = instance.fetch_observations(source_key, limit=1).records
    if records:
        observation = records[0].asset_observation
        seen = observation.tags.get(DATA_VERSION_TAG) if observation and observation.tags else None
        if seen is not None and seen.isdigit() and int(seen) >= version:
            return None
    return dg.AssetObservation(
        asset_key=source_key,
        metadata={md.DELTA_VERSION: version},
        tags={DATA_VERSION_TAG: str(version), USER_PROVIDED_TAG: "true"},
    )


def report_sync(
    instance: dg.DagsterInstance,
    table: SyncedTable,
    result: SyncResult,
    status: TableStatus,
    columns: dict[str, str],
    *,
    translator: SyncedTableTranslator | None = None,
) -> None:
    """Record a sync that ran outside any Dagster run (the CLI) in `instance`, as a run would."""
    spec = (translator or SyncedTableTranslator()).get_asset_spec(table)
    [source_key] = [dep.asset_key for dep in spec.deps]
    observation = source_observation(instance, source_key, result.version)
    if observation is not None:
        instance.report_runless_asset_event(observation)
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=spec.key,
            metadata=sync_metadata(table, result, status, columns),
            tags=outside_run_tags(source_key, result.version),
        )
    )


def record_cli_sync(table: SyncedTable, result: SyncResult, dsn: str) -> None:
    """Record a `reverse-etl sync` in the instance DAGSTER_HOME names, so the UI shows it."""
    with dg.DagsterInstance.get() as instance:
        status = read_table_status(table, dsn)
        with connect(dsn, autocommit=True) as conn:
            columns = catalog.column_types(conn, table.pg_schema, table.pg_table)
        report_sync(instance, table, result, status, columns)
