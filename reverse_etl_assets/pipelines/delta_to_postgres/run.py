"""Sync one synced table now: the single entry point the CLI and the Dagster asset call.

A sync is a plan (`plan.plan_sync`: checkpoint, source, path; nothing written) and its landing
(`land_sync`: the data and the checkpoint in one swap or one transaction), under the table's lock;
every failure is recorded in the state table.
"""

from __future__ import annotations

import psycopg

from reverse_etl_assets.errors import CheckpointMoved
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.pipelines.delta_to_postgres.incremental import (
    land_incremental,
    nothing_to_do,
)
from reverse_etl_assets.pipelines.delta_to_postgres.plan import (
    INCREMENTAL,
    NONE,
    Checkpoint,
    SyncPlan,
    checkpoint_of,
    plan_with,
)
from reverse_etl_assets.pipelines.delta_to_postgres.preflight import check_readers
from reverse_etl_assets.pipelines.delta_to_postgres.result import Progress, SyncResult
from reverse_etl_assets.pipelines.delta_to_postgres.snapshot import (
    load_snapshot,
    record_failure,
    skip_snapshot,
)
from reverse_etl_assets.postgres import protection, state
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.locks import table_lock
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
    try:
        plan = plan_with(conn, table, full_refresh=full_refresh)
        return _land(conn, plan, dsn, on_progress=on_progress)
    except Exception as exc:
        record_failure(conn, table, exc)
        raise


def land_sync(plan: SyncPlan, dsn: str, *, on_progress: Progress | None = None) -> SyncResult:
    """Write what `plan` decided, with its checkpoint, under the table's lock.

    The plan may have been made without the lock: when the checkpoint moved since, nothing is
    written and CheckpointMoved (transient) says to plan again.
    """
    table = plan.table
    with connect(dsn, autocommit=True) as conn:
        state.ensure_state_table(conn)
        protection.ensure_guard_function(conn)
        with table_lock(conn, table.name):
            try:
                return land_locked(conn, plan, dsn, on_progress=on_progress)
            except CheckpointMoved:
                raise  # not a failure of the table: the next plan starts where it now stands
            except Exception as exc:
                record_failure(conn, table, exc)
                raise


def land_locked(
    conn: psycopg.Connection, plan: SyncPlan, dsn: str, *, on_progress: Progress | None = None
) -> SyncResult:
    """`land_sync` for a caller whose autocommit `conn` holds the table's lock (failures are the
    caller's to record)."""
    now = checkpoint_of(state.read_state(conn, plan.table.name))
    if now != plan.start:
        raise CheckpointMoved(
            f"synced table {plan.table.name!r}: the checkpoint moved from "
            f"{_describe(plan.start)} to {_describe(now)} since this sync was planned; nothing "
            "was written, plan it again"
        )
    return _land(conn, plan, dsn, on_progress=on_progress)


def _land(
    conn: psycopg.Connection, plan: SyncPlan, dsn: str, *, on_progress: Progress | None
) -> SyncResult:
    table, stored = plan.table, plan.stored
    if plan.path == NONE:
        assert stored is not None
        if table.mode == "snapshot":
            return skip_snapshot(conn, table, stored, reason=plan.reason)
        return nothing_to_do(table, dsn, stored)
    if plan.path == INCREMENTAL:
        assert stored is not None
        return land_incremental(
            table, dsn, stored, plan.source, plan.columns, on_progress=on_progress
        )
    if plan.initial:
        state.record_state(
            conn, table, state=states.PROVISIONING_INITIAL_SNAPSHOT, message="initial snapshot"
        )
    return load_snapshot(
        table, dsn, plan.source, plan.columns, reason=plan.reason, on_progress=on_progress
    )


def _describe(checkpoint: Checkpoint | None) -> str:
    if checkpoint is None:
        return "nothing synced"
    return f"version {checkpoint.version} of Delta table {checkpoint.table_id}"
