"""One Dagster asset per synced table, and one observable asset per Delta source.

The asset body is a call into the core; this module only decides keys, deps and metadata.
"""

import re
import time

import dagster as dg

from reverse_etl_assets.delta.reader import open_source
from reverse_etl_assets.orchestration import metadata as md
from reverse_etl_assets.orchestration.resources import PostgresTarget
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.runtime.progress import describe_progress
from reverse_etl_assets.spec import THREE_PART, SyncedTable

GROUP = "synced_tables"
SOURCE_GROUP = "delta_sources"
PROGRESS_EVERY_SECONDS = 5.0


def source_asset_key(table: SyncedTable) -> dg.AssetKey:
    """A three-part source keeps its name; a path or URI becomes delta/<sanitized path>."""
    if THREE_PART.match(table.source):
        return dg.AssetKey(table.source.split("."))
    return dg.AssetKey(["delta", re.sub(r"[^A-Za-z0-9_]+", "_", table.source).strip("_")])


def source_asset(table: SyncedTable) -> dg.SourceAsset:
    """The Delta source as an observable asset whose data version is its Delta version."""

    @dg.observable_source_asset(
        key=source_asset_key(table),
        group_name=SOURCE_GROUP,
        description=f"Delta table {table.source} ({table.source_uri})",
        metadata={md.SOURCE: table.source_uri},
    )
    def _observe() -> dg.ObserveResult:
        source = open_source(table.source_uri, storage_options=table.storage_options)
        return dg.ObserveResult(
            data_version=dg.DataVersion(str(source.version)),
            metadata={md.DELTA_VERSION: source.version, md.SOURCE: table.source_uri},
        )

    return _observe


def synced_table_asset(table: SyncedTable) -> dg.AssetsDefinition:
    """The synced table as an asset: materializing it syncs once ("sync now")."""
    automation = None
    if table.schedule:
        # Not on_cron: it also waits for the (unobserved) Delta source to update after the tick.
        # A synced table syncs on every tick; the sync itself is a no-op when nothing changed.
        tick = dg.AutomationCondition.cron_tick_passed(table.schedule)
        automation = (tick & ~dg.AutomationCondition.in_progress()).with_label(
            f"sync on schedule {table.schedule} (UTC)"
        )

    @dg.asset(
        key=dg.AssetKey(table.asset_key_path),
        deps=[source_asset_key(table)],
        group_name=GROUP,
        kinds={"delta", "postgres"},
        description=f'Postgres table "{table.pg_schema}"."{table.pg_table}" synced from '
        f"{table.source} ({table.mode}).",
        metadata={md.MODE: table.mode, md.SOURCE: table.source, md.POSTGRES_TABLE: table.name},
        automation_condition=automation,
    )
    def _sync(context: dg.AssetExecutionContext, postgres: PostgresTarget) -> dg.MaterializeResult:
        last_log = [time.monotonic()]

        started = time.monotonic()

        def progress(done: int, total: int | None) -> None:
            if time.monotonic() - last_log[0] >= PROGRESS_EVERY_SECONDS:
                last_log[0] = time.monotonic()
                line = describe_progress(done, total, time.monotonic() - started)
                context.log.info(f"{table.name}: {line}")

        result = sync_table(table, postgres.get_dsn(), on_progress=progress)
        context.log.info(
            f"{table.name}: version {result.version}, {result.rows:,} rows via {result.path} "
            f"in {result.seconds:.2f}s"
        )
        return dg.MaterializeResult(
            metadata={
                md.ROW_COUNT: result.rows,
                md.DELTA_VERSION: result.version,
                md.MODE: table.mode,
                md.SYNC_PATH: result.path,
                md.ROWS_PER_SECOND: round(result.rows_per_second, 1),
                md.DURATION_SECONDS: round(result.seconds, 3),
                md.SKIPPED_NULL_KEYS: result.skipped_null_keys,
                md.CHANGES: result.changes,
                md.DETAILED_STATE: states.ONLINE_NO_PENDING_UPDATE,
                md.REASON: result.reason,
            },
            data_version=dg.DataVersion(str(result.version)),
        )

    return _sync
