"""Incremental sync: apply the Change Data Feed of versions L+1..V in one transaction.

The checks a plan runs first (schema, range) and the landing of the changes; when the range turns
out impossible to apply or a full copy is cheaper, a snapshot swap runs instead and says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import pyarrow as pa
from psycopg import sql

from reverse_etl_assets.delta.change_feed import stream_changes
from reverse_etl_assets.delta.log import Commit, RangeUnavailable, read_commits
from reverse_etl_assets.delta.reader import (
    SourceSnapshot,
    open_source,
    read_rows_with_keys,
)
from reverse_etl_assets.errors import DataError, SourceError
from reverse_etl_assets.pipelines.delta_to_postgres import cost, states
from reverse_etl_assets.pipelines.delta_to_postgres.result import Progress, SyncResult
from reverse_etl_assets.pipelines.delta_to_postgres.snapshot import load_snapshot
from reverse_etl_assets.postgres import apply, catalog, change_stage, protection, state
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.state import TableState
from reverse_etl_assets.runtime.prefetch import prefetched
from reverse_etl_assets.schema.delta_to_postgres import PgColumn
from reverse_etl_assets.spec import SyncedTable
from reverse_etl_assets.transform.changes import ChangePreparer

# Server settings of the landing transaction. Memory for the stage (the pipeline's own stays
# flat): the 4 MB default work_mem spills the sort of a few hundred thousand changes to disk, and
# temp tables beyond the 8 MB default temp_buffers are written to disk and read back; both are
# ceilings the backend reaches only for a range that large. And random reads priced as on SSD,
# so the keys to delete are looked up in the primary key rather than the synced table scanned
# whole (measured on the benchmark range: 0.04 s instead of 0.6-1.4 s).
NETTING_SETTINGS = {"work_mem": "64MB", "temp_buffers": "256MB", "random_page_cost": "1.1"}


class SchemaChangeError(DataError):
    """The source dropped, renamed or retyped a column: only a rebuild can follow it."""


def land_incremental(
    table: SyncedTable,
    dsn: str,
    stored: TableState,
    source: SourceSnapshot,
    columns: tuple[PgColumn, ...],
    *,
    reason: str = "",
    estimates: dict[str, float] | None = None,
    changed_rows: int | None = None,
    on_progress: Progress | None = None,
) -> SyncResult:
    """Apply versions L+1..V (L: the checkpoint in `stored`, V: the pinned `source`) in one
    transaction; a range that turns out unreadable or too large is swapped in as a snapshot.

    `reason` and `estimates` say why the plan chose the increment; `changed_rows` (the Delta
    log's count for the range) measures the rate this landing reaches."""
    started = time.monotonic()
    assert stored.last_synced_version is not None

    def full_refresh(why: str) -> SyncResult:
        return load_snapshot(
            table,
            dsn,
            source,
            columns,
            reason=f"full refresh: {why}",
            on_progress=on_progress,
            estimates=estimates,
            rate=stored.snapshot_rows_per_second,
        )

    try:
        landed = _land_changes(
            table,
            dsn,
            stored,
            source,
            columns,
            message=reason,
            rate=lambda: cost.learned_rate(
                stored.incremental_changes_per_second,
                units=changed_rows,
                seconds=time.monotonic() - started,
                fixed=cost.INCREMENTAL_FIXED_SECONDS,
            ),
        )
    except RangeUnavailable as exc:
        return full_refresh(unreadable(stored.last_synced_version, source, exc))
    except (_SnapshotCheaper, change_stage.DuplicatesResolvedLater) as why:
        return full_refresh(str(why))
    return SyncResult(
        name=table.name,
        mode=table.mode,
        path="incremental",
        version=source.version,
        rows=landed.rows,
        changes=landed.changes,
        skipped_null_keys=landed.skipped_null_keys,
        seconds=time.monotonic() - started,
        reason=reason,
        estimates=estimates or {},
    )


def unreadable(last: int, source: SourceSnapshot, exc: RangeUnavailable) -> str:
    """Why the range after checkpoint `last` cannot be applied as changes."""
    return f"versions {last + 1}..{source.version} cannot be read ({exc})"


def check_range(table: SyncedTable, source: SourceSnapshot, *, start: int) -> list[Commit]:
    """Every version of the range has its commit and the Change Data Feed on; its commits."""
    commits = read_commits(
        source.uri, storage_options=table.storage_options, start=start, end=source.version
    )
    first = open_source(source.uri, storage_options=table.storage_options, version=start)
    if not first.cdf_enabled:
        raise RangeUnavailable(f"the Change Data Feed was not enabled at version {start}")
    for commit in commits:
        if commit.cdf_enabled is False:
            raise RangeUnavailable(
                f"the Change Data Feed was turned off at version {commit.version}"
            )
    return commits


def nested_type_change(
    table: SyncedTable, source: SourceSnapshot, commits: list[Commit], *, last: int
) -> str | None:
    """Why the range after checkpoint `last` must be swapped in whole, when an array/map/struct
    column gained fields in it (at any depth), else None; a SchemaChangeError when a nested
    field was dropped, renamed or retyped (like a column: only a rebuild follows it).

    The column stays jsonb, so `check_schema` lets it pass, but its JSON shape changes for every
    row, also the rows no version of the range touches: only a snapshot rewrites those. The
    schema at `last` is read only when a commit of the range changed the table's metadata."""
    if all(commit.metadata is None for commit in commits):
        return None
    try:
        before = open_source(source.uri, storage_options=table.storage_options, version=last)
    except SourceError as exc:
        return f"the schema of version {last} cannot be read to compare column types ({exc})"
    for field in source.schema:
        if not pa.types.is_nested(field.type) or field.name not in before.schema.names:
            continue
        old = before.schema.field(field.name).type
        if old == field.type:
            continue
        if not _widens(old, field.type):
            raise SchemaChangeError(
                f"synced table {table.name!r}: column {field.name!r} changed type from {old} "
                f"to {field.type} (a nested field dropped, renamed or retyped); only added "
                "columns and fields are followed incrementally. Postgres still serves the last "
                f"synced version. Rebuild with `reverse-etl sync {table.name} --full-refresh`"
            )
        return (
            f"column {field.name!r} changed its nested type from {old} to {field.type}, "
            "which changes the JSON of every row"
        )
    return None


def _widens(old: pa.DataType, new: pa.DataType) -> bool:
    """Whether `new` is `old` with struct fields added (at any depth), nothing else changed."""
    if pa.types.is_struct(old) and pa.types.is_struct(new):
        fields = {new.field(i).name: new.field(i).type for i in range(new.num_fields)}
        return all(
            old.field(i).name in fields and _widens(old.field(i).type, fields[old.field(i).name])
            for i in range(old.num_fields)
        )
    if pa.types.is_map(old) and pa.types.is_map(new):
        return _widens(old.key_type, new.key_type) and _widens(old.item_type, new.item_type)
    if pa.types.is_list(old) and pa.types.is_list(new):
        return _widens(old.value_type, new.value_type)
    return bool(old == new)


class _SnapshotCheaper(Exception):
    """The staged range changes too many keys: roll it back and swap a snapshot in instead."""


@dataclass(frozen=True, kw_only=True)
class _Landed:
    rows: int
    changes: int
    skipped_null_keys: int


def _land_changes(
    table: SyncedTable,
    dsn: str,
    stored: TableState,
    source: SourceSnapshot,
    columns: tuple[PgColumn, ...],
    *,
    message: str,
    rate: Callable[[], float | None],
) -> _Landed:
    """Stream the range into a stage, net it, apply it and move the checkpoint (with `message`
    and the increment `rate()` returns): one transaction.

    The feed is read to its end inside the transaction, batch by batch: a read error rolls back
    everything staged, so Postgres stays at L; memory holds a few batches whatever the range.
    """
    assert stored.last_synced_version is not None
    key = table.primary_key
    preparer = ChangePreparer(
        columns,
        key=key,
        policy=table.on_invalid_characters,
        table=table.name,
        keep_keys=table.timeseries_key is not None,
    )
    feed = stream_changes(
        source.table,
        uri=source.uri,
        storage_options=table.storage_options,
        start=stored.last_synced_version + 1,
        end=source.version,
        schema=source.schema,
        # A timeseries table settles every key a row left from (preimages included) instead.
        key=key if table.timeseries_key is None else None,
    )
    schema, name = table.pg_schema, table.pg_table
    # Reading the feed starts now, in a worker, while the transaction is set up.
    with (
        prefetched(apply.encoded(preparer.stream(feed), preparer.columns)) as chunks,
        connect(dsn) as conn,
        conn.transaction(),
    ):
        protection.allow_pipeline_writes(conn)
        live = catalog.column_types(conn, schema, name)
        check_schema(table, live, columns)
        for setting, value in NETTING_SETTINGS.items():
            conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.SQL(setting), sql.Literal(value)))
        apply.stage_chunks(conn, change_stage.STAGE, preparer.columns, chunks)
        net = _net(conn, table, source, columns, preparer)
        changes = net.changes
        if table.on_invalid_characters == "fail" and preparer.marked_rows:
            change_stage.refuse_invalid_characters(
                conn, key=key, target=sql.Identifier(schema, name), table=table.name
            )
        rows = stored.rows or 0
        threshold = table.full_refresh_threshold  # set: the spec's share rule, on exact keys
        if threshold is not None and changes and changes > threshold * rows:
            share = f"{changes:,} changed keys > {threshold:.0%} of {rows:,} rows"
            raise _SnapshotCheaper(f"{share}, a snapshot is cheaper")
        apply.add_columns(conn, schema, name, [c for c in columns if c.name not in live])
        if not protection.is_protected(conn, schema=schema, table=name):
            protection.protect_table(conn, schema=schema, table=name, source=table.source)
        if changes:
            applied = apply.apply_net(
                conn,
                schema=schema,
                table=name,
                columns=columns,
                key=key,
                upserts=net.upserts,
                deletes=net.deletes,
                # Only appends compare timestamps; resolved keys are the source's latest row as is.
                timeseries_key=table.timeseries_key if preparer.leaving_rows == 0 else None,
            )
            rows += applied.inserted - applied.deleted
        skipped_null_keys = max(stored.skipped_null_keys + preparer.null_key_rows, 0)
        state.save_checkpoint(
            conn,
            table,
            table_id=source.table_id,
            version=source.version,
            rows=rows,
            skipped_null_keys=skipped_null_keys,
            state=states.ONLINE_NO_PENDING_UPDATE,
            message=message,
            expected_version=stored.last_synced_version,
            incremental_changes_per_second=rate(),
        )
    return _Landed(rows=rows, changes=changes, skipped_null_keys=skipped_null_keys)


def _net(
    conn: psycopg.Connection,
    table: SyncedTable,
    source: SourceSnapshot,
    columns: tuple[PgColumn, ...],
    preparer: ChangePreparer,
) -> change_stage.Net:
    """Net the stage: the rows to upsert and the keys to delete."""
    key = table.primary_key
    if table.timeseries_key is None:
        return change_stage.net_last_changes(
            conn,
            key=key,
            columns=columns,
            table=table.name,
            target=sql.Identifier(table.pg_schema, table.pg_table),
            arriving_rows=preparer.arriving_rows,
            new_rows=preparer.new_rows,
            # NUL bytes to judge: the rule needs the net table (they are rare).
            sort=table.on_invalid_characters == "fail" and preparer.marked_rows > 0,
        )
    resolved = preparer.leaving_rows > 0
    touched = preparer.touched_keys()
    if resolved and touched is not None:
        # The range removed rows of a timeseries table: a key may fall back to an older row the
        # feed does not carry. The touched keys' rows are read from the source at V (file
        # statistics skip the rest), which writes only those keys; a snapshot swap would
        # rewrite the whole table and its indexes for the same answer.
        apply.stage_rows(
            conn,
            change_stage.REMAINING,
            preparer.row_columns,
            preparer.rows(read_rows_with_keys(source, touched)),
        )
    return change_stage.net_latest_rows(
        conn,
        key=key,
        columns=columns,
        timeseries_key=table.timeseries_key,
        table=table.name,
        resolved=resolved and touched is not None,
        target=sql.Identifier(table.pg_schema, table.pg_table),
    )


def check_schema(table: SyncedTable, live: dict[str, str], columns: tuple[PgColumn, ...]) -> None:
    """Only added columns can follow incrementally; anything else needs a rebuild."""
    if not live:
        raise SchemaChangeError(
            f"synced table {table.name!r}: the Postgres table {table.pg_schema}.{table.pg_table} "
            f"is missing; rebuild it with `reverse-etl sync {table.name} --full-refresh`"
        )
    source_types = {c.name: _normalize(c.ddl) for c in columns}
    for name, pg_type in live.items():
        if name not in source_types:
            problem = f"column {name!r} was dropped or renamed in the source"
        elif source_types[name] != _normalize(pg_type):
            problem = f"column {name!r} changed type from {pg_type} to {source_types[name]}"
        else:
            continue
        raise SchemaChangeError(
            f"synced table {table.name!r}: {problem}; only added columns are followed "
            f"incrementally. Postgres still serves the last synced version. Rebuild with "
            f"`reverse-etl sync {table.name} --full-refresh`"
        )


_ALIASES = {
    "timestamptz": "timestamp with time zone",
    "timestamp": "timestamp without time zone",
    "time": "time without time zone",
}


def _normalize(pg_type: str) -> str:
    return _ALIASES.get(pg_type, pg_type)


def nothing_to_do(table: SyncedTable, dsn: str, stored: TableState) -> SyncResult:
    """The sync of a table whose source is still at the checkpointed version."""
    started = time.monotonic()
    if stored.state != states.ONLINE_NO_PENDING_UPDATE:
        with connect(dsn, autocommit=True) as conn:
            state.record_state(
                conn,
                table,
                state=states.ONLINE_NO_PENDING_UPDATE,
                message="",
            )
    return SyncResult(
        name=table.name,
        mode=table.mode,
        path="none",
        version=stored.last_synced_version or 0,
        rows=stored.rows or 0,
        skipped_null_keys=stored.skipped_null_keys,
        seconds=time.monotonic() - started,
    )
