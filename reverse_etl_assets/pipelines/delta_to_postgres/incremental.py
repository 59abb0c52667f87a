"""Incremental sync: apply the Change Data Feed of versions L+1..V in one transaction.

The checks a plan runs first (schema, range) and the landing of the changes; when the range turns
out impossible to apply or a full copy is cheaper, a snapshot swap runs instead and says why.
"""

from __future__ import annotations

import time

from reverse_etl_assets.delta.change_feed import read_changes
from reverse_etl_assets.delta.log import RangeUnavailable, read_commits
from reverse_etl_assets.delta.reader import SourceSnapshot, open_source, read_rows_with_keys
from reverse_etl_assets.errors import DataError
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.pipelines.delta_to_postgres.result import Progress, SyncResult
from reverse_etl_assets.pipelines.delta_to_postgres.snapshot import load_snapshot
from reverse_etl_assets.postgres import apply, catalog, protection, state
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.state import TableState
from reverse_etl_assets.schema.delta_to_postgres import PgColumn, key_columns
from reverse_etl_assets.spec import SyncedTable
from reverse_etl_assets.transform.changes import NetChanges, net_changes, resolve_latest
from reverse_etl_assets.transform.cleaning import BatchPreparer


class SchemaChangeError(DataError):
    """The source dropped, renamed or retyped a column: only a rebuild can follow it."""


def land_incremental(
    table: SyncedTable,
    dsn: str,
    stored: TableState,
    source: SourceSnapshot,
    columns: tuple[PgColumn, ...],
    *,
    on_progress: Progress | None = None,
) -> SyncResult:
    """Apply versions L+1..V (L: the checkpoint in `stored`, V: the pinned `source`) in one
    transaction; a range that turns out unreadable or too large is swapped in as a snapshot."""
    started = time.monotonic()
    assert stored.last_synced_version is not None
    last = stored.last_synced_version

    def full_refresh(reason: str) -> SyncResult:
        return load_snapshot(
            table, dsn, source, columns, reason=f"full refresh: {reason}", on_progress=on_progress
        )

    try:
        changes = read_changes(source.table, start=last + 1, end=source.version)
    except RangeUnavailable as exc:
        return full_refresh(unreadable(last, source, exc))
    net = net_changes(
        changes,
        key=table.primary_key,
        columns=source.schema.names,
        timeseries_key=table.timeseries_key,
        table=table.name,
    )
    del changes  # the raw feed can be several times the net changes: free it before applying
    rows = stored.rows or 0
    if net.count and net.count > table.full_refresh_threshold * rows:
        share = f"{net.count:,} changed keys > {table.full_refresh_threshold:.0%} of {rows:,} rows"
        return full_refresh(f"{share}, a snapshot is cheaper")
    if net.unresolved is not None:
        assert table.timeseries_key is not None
        # The range removed rows of a timeseries table: a key may fall back to an older row the
        # feed does not carry. Its remaining rows are read from the source at V (only the
        # touched keys; file statistics skip the rest), which writes only those keys; a snapshot
        # swap would rewrite the whole table and its indexes for the same answer.
        net = resolve_latest(
            net,
            read_rows_with_keys(source, net.unresolved),
            key=table.primary_key,
            timeseries_key=table.timeseries_key,
            table=table.name,
        )
    skipped_null_keys = max(stored.skipped_null_keys + net.null_key_rows, 0)
    new_rows = _apply(table, dsn, source, columns, net, stored, skipped_null_keys)
    return SyncResult(
        name=table.name,
        mode=table.mode,
        path="incremental",
        version=source.version,
        rows=new_rows,
        changes=net.count,
        skipped_null_keys=skipped_null_keys,
        seconds=time.monotonic() - started,
    )


def unreadable(last: int, source: SourceSnapshot, exc: RangeUnavailable) -> str:
    """Why the range after checkpoint `last` cannot be applied as changes."""
    return f"versions {last + 1}..{source.version} cannot be read ({exc})"


def check_range(table: SyncedTable, source: SourceSnapshot, *, start: int) -> None:
    """Every version of the range has its commit and the Change Data Feed on."""
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


def _apply(
    table: SyncedTable,
    dsn: str,
    source: SourceSnapshot,
    columns: tuple[PgColumn, ...],
    net: NetChanges,
    stored: TableState,
    skipped_null_keys: int,
) -> int:
    preparer = BatchPreparer(
        columns, key=table.primary_key, policy=table.on_invalid_characters, table=table.name
    )
    upserts = preparer.stream(net.upserts.to_batches(max_chunksize=65_536))
    # Delete keys follow the same rules as every value that reaches Postgres (NUL bytes).
    key_preparer = BatchPreparer(
        key_columns(columns, table.primary_key),
        key=table.primary_key,
        policy=table.on_invalid_characters,
        table=table.name,
    )
    deletes = key_preparer.stream(net.deletes.to_batches(max_chunksize=65_536))
    schema, name = table.pg_schema, table.pg_table
    with connect(dsn) as conn, conn.transaction():
        protection.allow_pipeline_writes(conn)
        live = catalog.column_types(conn, schema, name)
        check_schema(table, live, columns)
        apply.add_columns(conn, schema, name, [c for c in columns if c.name not in live])
        if not protection.is_protected(conn, schema=schema, table=name):
            protection.protect_table(conn, schema=schema, table=name, source=table.source)
        applied = apply.apply_changes(
            conn,
            schema=schema,
            table=name,
            columns=columns,
            key=table.primary_key,
            upserts=upserts,
            deletes=deletes,
            # Only appends compare timestamps; resolved keys are the source's latest row as is.
            timeseries_key=table.timeseries_key if net.newer_only else None,
        )
        rows = (stored.rows or 0) + applied.inserted - applied.deleted
        state.save_checkpoint(
            conn,
            table,
            table_id=source.table_id,
            version=source.version,
            rows=rows,
            skipped_null_keys=skipped_null_keys,
            state=states.ONLINE_NO_PENDING_UPDATE,
            expected_version=stored.last_synced_version,
        )
    return rows


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
