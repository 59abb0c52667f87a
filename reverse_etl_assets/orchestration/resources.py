"""Dagster resource for the target Postgres: hands out the DSN and runs the syncs of the synced
tables an asset step selected, yielding one `MaterializeResult` each (like `SlingResource`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import dagster as dg

from reverse_etl_assets import settings
from reverse_etl_assets.errors import ReverseEtlError, translate
from reverse_etl_assets.orchestration import events
from reverse_etl_assets.orchestration.asset_decorator import synced_table_of
from reverse_etl_assets.pipelines.delta_to_postgres.result import SyncResult
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.pipelines.delta_to_postgres.status import TableStatus, read_table_status
from reverse_etl_assets.postgres import catalog
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.runtime.progress import describe_progress
from reverse_etl_assets.spec import SyncedTable

PROGRESS_EVERY_SECONDS = 5.0
# A transient error (a lock held by a reader, a dropped connection) retries the step this often,
# waiting RETRY_SECONDS x attempt; a terminal one fails it with what to do.
MAX_RETRIES = 3
RETRY_SECONDS = 10.0


class PostgresTarget(dg.ConfigurableResource):
    """The Postgres database synced tables land in; empty `dsn` means REVERSE_ETL_PG_DSN or the
    embedded development cluster, started on first use.

    A DSN holding a password belongs in an environment variable (`dg.EnvVar(...)` or
    REVERSE_ETL_PG_DSN), not in code or run config, which Dagster shows in its UI.
    """

    dsn: str = ""

    def get_dsn(self) -> str:
        """The libpq URI to connect with."""
        return self.dsn or settings.pg_dsn()

    def sync(
        self, context: dg.AssetExecutionContext, *, full_refresh: bool = False
    ) -> Iterator[dg.AssetObservation | dg.MaterializeResult]:
        """Sync each selected synced table once, in order; one result per table."""
        specs = context.assets_def.specs_by_key
        for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
            table = synced_table_of(specs[key])
            [source_key] = [dep.asset_key for dep in specs[key].deps]
            result = self._sync_one(context, table, full_refresh=full_refresh)
            observation = events.source_observation(context.instance, source_key, result.version)
            if observation is not None:
                yield observation
            status, columns = self._describe(table)
            yield dg.MaterializeResult(
                asset_key=key,
                metadata=events.sync_metadata(table, result, status, columns),
                data_version=dg.DataVersion(str(result.version)),
                tags=events.consumed_tags(source_key, result.version),
            )

    def _sync_one(
        self, context: dg.AssetExecutionContext, table: SyncedTable, *, full_refresh: bool
    ) -> SyncResult:
        started = last_log = time.monotonic()

        def progress(done: int, total: int | None) -> None:
            nonlocal last_log
            if time.monotonic() - last_log >= PROGRESS_EVERY_SECONDS:
                last_log = time.monotonic()
                line = describe_progress(done, total, last_log - started)
                context.log.info(f"{table.name}: {line}")

        try:
            result = sync_table(
                table, self.get_dsn(), full_refresh=full_refresh, on_progress=progress
            )
        except Exception as exc:
            raise _in_dagster_terms(context, table, exc) from exc
        context.log.info(
            f"{table.name}: version {result.version}, {result.rows:,} rows via {result.path} "
            f"in {result.seconds:.2f}s" + (f" ({result.reason})" if result.reason else "")
        )
        return result

    def _describe(self, table: SyncedTable) -> tuple[TableStatus, dict[str, str]]:
        """The table's status and Postgres columns after the sync."""
        status = read_table_status(table, self.get_dsn())
        with connect(self.get_dsn(), autocommit=True) as conn:
            columns = catalog.column_types(conn, table.pg_schema, table.pg_table)
        return status, columns


def _in_dagster_terms(
    context: dg.AssetExecutionContext, table: SyncedTable, exc: Exception
) -> Exception:
    """A transient error asks for a retry; a terminal one is a `Failure` saying what to do."""
    failure = exc if isinstance(exc, ReverseEtlError) else translate(exc)
    if failure is None:
        return exc
    if not failure.terminal and context.retry_number < MAX_RETRIES:
        wait = RETRY_SECONDS * (context.retry_number + 1)
        context.log.warning(f"{table.name}: {failure} (transient: retrying in {wait:.0f}s)")
        return dg.RetryRequested(max_retries=MAX_RETRIES, seconds_to_wait=wait)
    return dg.Failure(
        description=f"synced table {table.name}: {failure}",
        metadata={
            "reverse_etl/synced_table": table.name,
            "reverse_etl/error": type(failure).__name__,
            "reverse_etl/terminal": failure.terminal,
            "reverse_etl/what_to_do": _what_to_do(table, failure),
        },
        allow_retries=False,
    )


def _what_to_do(table: SyncedTable, failure: ReverseEtlError) -> str:
    if not failure.terminal:
        return f"retried {MAX_RETRIES} times; check the server, then materialize again"
    return (
        "fix what the description names (spec, source or data), then materialize again; "
        f"`reverse-etl status {table.name}` shows the state, `reverse-etl validate` checks the spec"
    )
