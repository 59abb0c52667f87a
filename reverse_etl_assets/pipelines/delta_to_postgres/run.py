"""Sync one synced table now: the single entry point the CLI and the Dagster asset call.

Takes the table's lock, reads its checkpoint, picks the path (snapshot or incremental) and
records the outcome in the state table.
"""

from __future__ import annotations

import psycopg

from reverse_etl_assets.delta.reader import SourceSnapshot, open_source
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.pipelines.delta_to_postgres.incremental import sync_incremental
from reverse_etl_assets.pipelines.delta_to_postgres.preflight import check_readers, check_source
from reverse_etl_assets.pipelines.delta_to_postgres.result import Progress, SyncResult
from reverse_etl_assets.pipelines.delta_to_postgres.snapshot import (
    load_snapshot,
    record_failure,
    skip_snapshot,
)
from reverse_etl_assets.postgres import protection, state
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.locks import table_lock
from reverse_etl_assets.postgres.state import TableState
from reverse_etl_assets.spec import SyncedTable


def sync_table(
    table: SyncedTable, dsn: str, *, full_refresh: bool = False, on_progress: Progress | None = None
) -> SyncResult:
    """Bring the Postgres table to the source's latest version, exactly once per version."""
    with connect(dsn, autocommit=True) as conn:
        check_readers(conn, table)
        state.ensure_state_table(conn)
        protection.ensure_guard_function(conn)
        with table_lock(conn, table.name):
            return sync_locked(conn, table, dsn, full_refresh=full_refresh, on_progress=on_progress)


def sync_locked(
    conn: psycopg.Connection,
    table: SyncedTable,
    dsn: str,
    *,
    full_refresh: bool = False,
    on_progress: Progress | None = None,
) -> SyncResult:
    """`sync_table` for a caller whose autocommit `conn` already holds the table's lock (the
    continuous follower holds it for its whole life)."""
    stored = state.read_state(conn, table.name)
    initial = stored is None or stored.last_synced_version is None
    try:
        if initial or full_refresh or table.mode == "snapshot":
            if initial:
                state.record_state(
                    conn,
                    table,
                    state=states.PROVISIONING_INITIAL_SNAPSHOT,
                    message="initial snapshot",
                )
            source = open_source(table.source_uri, storage_options=table.storage_options)
            columns = check_source(table, source)
            if not (initial or full_refresh) and _at_checkpoint(stored, source):
                assert stored is not None
                return skip_snapshot(conn, table, stored)
            reason = "full refresh requested" if full_refresh and not initial else ""
            return load_snapshot(
                table, dsn, source, columns, reason=reason, on_progress=on_progress
            )
        assert stored is not None
        return sync_incremental(table, dsn, stored, on_progress=on_progress)
    except Exception as exc:
        record_failure(conn, table, exc)
        raise


def _at_checkpoint(stored: TableState | None, source: SourceSnapshot) -> bool:
    """The checkpoint already holds this very table (same id) at this very version."""
    return (
        stored is not None
        and stored.last_synced_version == source.version
        and stored.table_id == source.table_id
    )
