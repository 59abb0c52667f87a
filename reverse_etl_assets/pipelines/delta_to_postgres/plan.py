"""Plan one sync of a synced table: what it will do, decided before anything is written.

Reads the checkpoint and the source's log (pinned at one version), runs the cheap checks and picks
the path; the data itself is read only when the plan lands (`run.land_sync`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from reverse_etl_assets.delta.log import Commit, RangeUnavailable, estimate_changed_rows
from reverse_etl_assets.delta.reader import SourceSnapshot, open_source
from reverse_etl_assets.pipelines.delta_to_postgres import cost, incremental
from reverse_etl_assets.pipelines.delta_to_postgres.preflight import check_readers, check_source
from reverse_etl_assets.pipelines.delta_to_postgres.snapshot import record_failure
from reverse_etl_assets.postgres import catalog, state
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.state import TableState
from reverse_etl_assets.schema.delta_to_postgres import PgColumn
from reverse_etl_assets.spec import SyncedTable

SNAPSHOT = "snapshot"
INCREMENTAL = "incremental"
NONE = "none"


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """Where the synced table stood: the Delta table (its id) and the version last applied."""

    version: int
    table_id: str | None


@dataclass(frozen=True, kw_only=True)
class SyncPlan:
    """What one sync will do. Its payload is lazy: the pinned source (and, for an increment, the
    range `start.version + 1 .. version`) is streamed only when the plan lands."""

    table: SyncedTable
    path: str  # SNAPSHOT, INCREMENTAL or NONE
    reason: str
    # The checkpoint the plan starts from (None: nothing synced yet); landing checks it is
    # still there.
    start: Checkpoint | None
    stored: TableState | None
    source: SourceSnapshot
    columns: tuple[PgColumn, ...]
    # For an increment's range: both paths' estimated seconds, and the changed rows the Delta
    # log reports (what the increment's rate is measured in).
    estimates: dict[str, float] = field(default_factory=dict)
    changed_rows: int | None = None

    @property
    def version(self) -> int:
        """The Delta version the synced table will equal once the plan lands."""
        if self.path == NONE and self.start is not None:
            return self.start.version
        return self.source.version

    @property
    def initial(self) -> bool:
        """Nothing was synced yet: the plan is the initial snapshot."""
        return self.start is None


def plan_sync(table: SyncedTable, dsn: str, *, full_refresh: bool = False) -> SyncPlan:
    """Read the checkpoint and the source, check them and choose the path; nothing is written
    but the failed state, when a check fails."""
    with connect(dsn, autocommit=True) as conn:
        state.ensure_state_table(conn)
        try:
            return plan_with(conn, table, full_refresh=full_refresh)
        except Exception as exc:
            record_failure(conn, table, exc)
            raise


def plan_with(
    conn: psycopg.Connection, table: SyncedTable, *, full_refresh: bool = False
) -> SyncPlan:
    """`plan_sync` on the caller's autocommit connection (failures are the caller's to record)."""
    check_readers(conn, table)
    stored = state.read_state(conn, table.name)
    start = checkpoint_of(stored)
    source = open_source(table.source_uri, storage_options=table.storage_options)
    columns = check_source(table, source)

    def plan(path: str, reason: str = "", estimate: cost.Estimate | None = None) -> SyncPlan:
        return SyncPlan(
            table=table,
            path=path,
            reason=reason,
            start=start,
            stored=stored,
            source=source,
            columns=columns,
            estimates=estimate.as_dict() if estimate else {},
            changed_rows=estimate.changed_rows if estimate else None,
        )

    if start is None:
        return plan(SNAPSHOT)
    if full_refresh:
        return plan(SNAPSHOT, "full refresh requested")
    if table.mode == "snapshot":
        if start.version == source.version and start.table_id == source.table_id:
            at = f"source still at version {start.version}, the checkpoint: nothing to copy"
            return plan(NONE, at)
        return plan(SNAPSHOT)
    if source.table_id != start.table_id or source.version < start.version:
        return plan(
            SNAPSHOT, "full refresh: the source table was recreated (its Delta table id changed)"
        )
    if source.version == start.version:
        return plan(NONE)
    # Before any path is chosen: a full refresh must not follow a dropped column silently.
    incremental.check_schema(
        table, catalog.column_types(conn, table.pg_schema, table.pg_table), columns
    )
    try:
        commits = incremental.check_range(table, source, start=start.version + 1)
    except RangeUnavailable as exc:
        return plan(SNAPSHOT, f"full refresh: {incremental.unreadable(start.version, source, exc)}")
    reshaped = incremental.nested_type_change(table, source, commits, last=start.version)
    if reshaped is not None:
        return plan(SNAPSHOT, f"full refresh: {reshaped}")
    estimate = _estimate(stored, source, commits)
    if table.full_refresh_threshold is not None:
        # The spec's share rule: decided on the exact changed keys, once the range is netted.
        return plan(INCREMENTAL, estimate=estimate)
    if estimate.cheaper == cost.SNAPSHOT:
        return plan(SNAPSHOT, f"full refresh: {estimate.describe()}", estimate)
    return plan(INCREMENTAL, estimate.describe(), estimate)


def _estimate(
    stored: TableState | None, source: SourceSnapshot, commits: list[Commit]
) -> cost.Estimate:
    """Both paths' cost for the range of `commits`, sized from the Delta log alone."""
    source_rows = source.rows()
    if source_rows is None:
        source_rows = (stored.rows if stored is not None else None) or 0
    bytes_per_row = 1.0
    if source_rows and any(c.data_change and c.changed_rows is None for c in commits):
        bytes_per_row = source.size_bytes() / source_rows
    changed = estimate_changed_rows(commits, bytes_per_row=bytes_per_row)
    return cost.estimate(stored, changed_rows=changed, source_rows=source_rows)


def checkpoint_of(stored: TableState | None) -> Checkpoint | None:
    """The checkpoint in a stored state, or None when nothing was synced yet."""
    if stored is None or stored.last_synced_version is None:
        return None
    return Checkpoint(version=stored.last_synced_version, table_id=stored.table_id)
