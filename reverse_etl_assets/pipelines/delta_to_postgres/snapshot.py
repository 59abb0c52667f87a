"""Snapshot sync: copy a Delta table at one pinned version into Postgres and swap it in.

The checkpoint commits in the swap transaction, so Postgres equals Delta at exactly one version.
"""

from __future__ import annotations

import time

import psycopg

from reverse_etl_assets.delta.reader import SourceSnapshot, read_batches
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.pipelines.delta_to_postgres.result import Progress, SyncResult
from reverse_etl_assets.postgres import protection, state
from reverse_etl_assets.postgres.state import TableState
from reverse_etl_assets.postgres.table_load import TableTarget, replace_table
from reverse_etl_assets.schema.delta_to_postgres import PgColumn
from reverse_etl_assets.spec import SyncedTable
from reverse_etl_assets.transform.cleaning import BatchPreparer

# Tables that take increments keep 10% of each page free, so most updates stay on their page
# (HOT: no new index entry); measured on the incremental benchmark.
INCREMENTAL_FILLFACTOR = 90


def load_snapshot(
    table: SyncedTable,
    dsn: str,
    source: SourceSnapshot,
    columns: tuple[PgColumn, ...],
    *,
    reason: str = "",
    on_progress: Progress | None = None,
) -> SyncResult:
    """Load `source` (pinned) into the synced table and write the checkpoint in the swap."""
    started = time.monotonic()
    expected = source.rows()
    preparer = BatchPreparer(
        columns, key=table.primary_key, policy=table.on_invalid_characters, table=table.name
    )

    def checkpoint(conn: psycopg.Connection, rows: int) -> None:
        protection.protect_table(
            conn, schema=table.pg_schema, table=table.pg_table, source=table.source
        )
        state.save_checkpoint(
            conn,
            table,
            table_id=source.table_id,
            version=source.version,
            rows=rows,
            skipped_null_keys=preparer.skipped_null_keys,
            state=states.ONLINE_NO_PENDING_UPDATE,
            message=reason,
        )

    rows = replace_table(
        dsn,
        TableTarget(
            schema=table.pg_schema,
            table=table.pg_table,
            primary_key=table.primary_key,
            indexes=table.indexes,
            timeseries_key=table.timeseries_key,
            readers=table.readers,
            max_connections=table.max_connections,
            fillfactor=None if table.mode == "snapshot" else INCREMENTAL_FILLFACTOR,
            label=table.name,
        ),
        columns,
        preparer.stream(read_batches(source)),
        expected_rows=expected,
        in_swap=checkpoint,
        on_progress=None if on_progress is None else lambda done: on_progress(done, expected),
    )
    return SyncResult(
        name=table.name,
        mode=table.mode,
        path="snapshot",
        version=source.version,
        rows=rows,
        skipped_null_keys=preparer.skipped_null_keys,
        seconds=time.monotonic() - started,
        reason=reason,
    )


def skip_snapshot(
    conn: psycopg.Connection, table: SyncedTable, stored: TableState, *, reason: str
) -> SyncResult:
    """The no-op sync of a snapshot table whose source is still at the checkpointed version."""
    started = time.monotonic()
    version = stored.last_synced_version or 0
    state.record_state(conn, table, state=states.ONLINE_NO_PENDING_UPDATE, message=reason)
    return SyncResult(
        name=table.name,
        mode=table.mode,
        path="none",
        version=version,
        rows=stored.rows or 0,
        skipped_null_keys=stored.skipped_null_keys,
        seconds=time.monotonic() - started,
        reason=reason,
    )


def record_failure(conn: psycopg.Connection, table: SyncedTable, exc: Exception) -> None:
    """Mark the table failed: online if Postgres still serves a good version, else offline."""
    previous = state.read_state(conn, table.name)
    serving = previous is not None and previous.last_synced_version is not None
    failed = states.ONLINE_PIPELINE_FAILED if serving else states.OFFLINE_FAILED
    _record(conn, table, failed, str(exc))


def _record(conn: psycopg.Connection, table: SyncedTable, detailed: str, message: str) -> None:
    state.record_state(conn, table, state=detailed, message=message)
