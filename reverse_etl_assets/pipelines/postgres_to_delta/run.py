"""`reverse-etl sync NAME` for a lakehouse sync: the first run takes the initial snapshot; every
run then drains the slot up to the WAL position at its start, lands it, acknowledges, and exits.

Also decides, before anything streams, whether streaming can go on at all: a slot that is gone or
invalidated while Delta holds data means changes were lost to it, which only a full refresh fixes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import psycopg

from reverse_etl_assets.delta import writer
from reverse_etl_assets.errors import ConfigError, ReverseEtlError, SpecError
from reverse_etl_assets.pipelines.postgres_to_delta import states
from reverse_etl_assets.pipelines.postgres_to_delta.preflight import check_lakehouse
from reverse_etl_assets.pipelines.postgres_to_delta.snapshot import take_snapshot
from reverse_etl_assets.pipelines.postgres_to_delta.stream import ChangeStream, Flushed, app_id
from reverse_etl_assets.postgres.connect import connect, parse_dsn
from reverse_etl_assets.postgres.lakehouse_state import (
    ensure_lakehouse_table,
    read_lakehouse_ack,
    read_lakehouse_state,
    record_lakehouse_ack,
    record_lakehouse_state,
)
from reverse_etl_assets.postgres.replication import slot as slots
from reverse_etl_assets.postgres.replication.lsn import format_lsn
from reverse_etl_assets.postgres.replication.problems import SlotActive
from reverse_etl_assets.spec import LakehouseSync

log = logging.getLogger(__name__)

DRAIN_POLL_SECONDS = 0.5


class SlotLost(ReverseEtlError):
    """The slot is gone or invalidated while Delta holds data: changes were lost to it."""


@dataclass
class LakehouseResult:
    """What one sync (or one flush of a follower) of a lakehouse sync did."""

    name: str
    path: str  # "snapshot", "stream" or "none"
    last_lsn: int | None
    rows: int = 0
    changes: dict[str, int] = field(default_factory=dict)
    table_changes: dict[str, dict[str, int]] = field(default_factory=dict)  # per "schema.table"
    snapshot_rows: dict[str, int] = field(default_factory=dict)
    failed_tables: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        """One line for the terminal."""
        lsn = format_lsn(self.last_lsn) if self.last_lsn is not None else "-"
        parts = [f"{self.name}: {self.path} up to LSN {lsn}"]
        if self.snapshot_rows:
            parts.append(f"snapshot {sum(self.snapshot_rows.values()):,} rows")
        if self.changes:
            parts.append(", ".join(f"{n:,} {kind}" for kind, n in sorted(self.changes.items())))
        if self.failed_tables:
            parts.append(f"FAILED tables: {', '.join(sorted(self.failed_tables))}")
        return "; ".join(parts) + f" in {self.seconds:.2f}s"


def source_dsn(sync: LakehouseSync, pipeline_dsn: str) -> str:
    """The source Postgres of `sync`: its `source_dsn_env`, else the pipeline's own DSN."""
    if sync.source_dsn_env is None:
        return pipeline_dsn
    dsn = os.environ.get(sync.source_dsn_env)
    if not dsn:
        raise ConfigError(
            f"lakehouse sync {sync.name!r}: `source_dsn_env` names {sync.source_dsn_env}, which "
            "is not set; export it with the source database's DSN"
        )
    parse_dsn(dsn, where=sync.source_dsn_env)  # a malformed DSN: a message without the password
    return dsn


def sync_lakehouse(
    sync: LakehouseSync, dsn: str, *, full_refresh: bool = False, state_dsn: str | None = None
) -> LakehouseResult:
    """Snapshot when needed, then drain the slot to the WAL position at the start; exits."""
    started = time.monotonic()
    source = source_dsn(sync, dsn)
    with connect(state_dsn or dsn, autocommit=True) as state_conn:
        ensure_lakehouse_table(state_conn)
        stored = read_lakehouse_state(state_conn, sync.name)
        failed = {} if full_refresh or stored is None else dict(stored.failed_tables)
        try:
            result = _sync(sync, source, state_conn, full_refresh=full_refresh, failed=failed)
        except Exception as exc:
            _record_failure(state_conn, sync, exc)
            raise
        result.seconds = time.monotonic() - started
        return result


def _sync(
    sync: LakehouseSync,
    source: str,
    state_conn: psycopg.Connection,
    *,
    full_refresh: bool,
    failed: dict[str, str],
) -> LakehouseResult:
    with connect(source, autocommit=True) as conn:
        tables, warnings = check_lakehouse(conn, sync)
        for warning in warnings:
            log.warning("%s", warning)
        acked = read_lakehouse_ack(state_conn, sync.name)
        needs_snapshot = full_refresh or _needs_snapshot(conn, sync, tables, acked=acked)
    if needs_snapshot:
        record_lakehouse_state(
            state_conn, name=sync.name, mode=sync.mode,
            state=states.PROVISIONING_INITIAL_SNAPSHOT, message="initial snapshot",
            failed_tables={},
        )  # fmt: skip
        lsn, copied = take_snapshot(sync, source, tables)
        record_lakehouse_ack(state_conn, name=sync.name, lsn=lsn)  # where the new slot starts
        record_lakehouse_state(
            state_conn, name=sync.name, mode=sync.mode, state=states.ONLINE_NO_PENDING_UPDATE,
            last_lsn=lsn, failed_tables={},
        )  # fmt: skip
        failed = {}
    drained = drain(
        sync,
        source,
        failed=failed,
        on_acknowledge=lambda lsn: record_lakehouse_ack(state_conn, name=sync.name, lsn=lsn),
    )
    record_flush(state_conn, sync, drained, failed=failed)
    return LakehouseResult(
        name=sync.name,
        path="snapshot" if needs_snapshot else ("stream" if drained.rows else "none"),
        last_lsn=drained.last_lsn or (lsn if needs_snapshot else None),
        rows=drained.rows,
        changes=drained.by_type,
        table_changes=drained.by_table,
        snapshot_rows=copied if needs_snapshot else {},
        failed_tables={**failed, **drained.failed},
    )


def _needs_snapshot(
    conn: psycopg.Connection,
    sync: LakehouseSync,
    tables: list[slots.TableInfo],
    *,
    acked: int | None,
) -> bool:
    """True for a first run (or one whose snapshot never finished); a SlotLost error when the
    slot is gone or invalidated although Delta holds data, or stands past `acked` (the furthest
    this sync ever acknowledged): re-created, or advanced by something else."""
    landed = [
        writer.transaction_version(uri, app_id(sync), storage_options=sync.storage_options)
        for uri in _locations(sync, tables)
    ]
    complete = bool(landed) and all(v is not None for v in landed)
    info = slots.slot_info(conn, sync.slot)
    if not complete:
        return True
    check_slot_kept(sync, info, acked=acked)
    return False


def check_slot_kept(sync: LakehouseSync, info: slots.SlotInfo | None, *, acked: int | None) -> None:
    """A SlotLost error when the slot Delta's data came through is gone, invalidated, or stands
    past `acked` (the furthest this sync ever acknowledged): re-created, or advanced by something
    else. Streaming from it would silently skip the changes in between."""
    if info is None or info.invalidated:
        what = "was dropped" if info is None else "was invalidated by the server"
        raise SlotLost(
            f"lakehouse sync {sync.name!r}: replication slot {sync.slot} {what}; the changes it "
            "held are lost to it, and re-creating it silently would skip them. Run "
            f"`reverse-etl sync {sync.name} --full-refresh` to take a new snapshot"
        )
    if (
        acked is not None
        and info.confirmed_flush_lsn is not None
        and info.confirmed_flush_lsn > acked
    ):
        raise SlotLost(
            f"lakehouse sync {sync.name!r}: replication slot {sync.slot} stands at LSN "
            f"{format_lsn(info.confirmed_flush_lsn)}, past {format_lsn(acked)}, the furthest this "
            "sync acknowledged: it was re-created or advanced by something else, and the changes "
            f"in between are lost to it. Run `reverse-etl sync {sync.name} --full-refresh` to "
            "take a new snapshot"
        )


def _locations(sync: LakehouseSync, tables: list[slots.TableInfo]) -> list[str]:
    uris = []
    for info in tables:
        if sync.history:
            uris.append(sync.history_uri(info.table))
        if sync.mirror and info.primary_key:
            uris.append(sync.mirror_uri(info.table))
    return uris


def drain(
    sync: LakehouseSync,
    source: str,
    *,
    failed: dict[str, str],
    on_acknowledge: Callable[[int], None] | None = None,
) -> Flushed:
    """Land every change committed before now, acknowledge it, and stop."""
    with connect(source, autocommit=True) as conn:
        info = slots.slot_info(conn, sync.slot)
    if info is None:
        raise SlotLost(f"lakehouse sync {sync.name!r}: replication slot {sync.slot} is missing")
    target = info.current_wal_lsn
    total = Flushed()
    if info.confirmed_flush_lsn is not None and info.confirmed_flush_lsn >= target:
        return total
    stream = ChangeStream(sync, source, failed_tables=failed, on_acknowledge=on_acknowledge)
    try:
        stream.request_position()
        while True:
            stream.receive(DRAIN_POLL_SECONDS)
            if stream.flush_due(sync.flush_interval_seconds):
                _add(total, stream.flush())
            if not stream.in_transaction and stream.stream.server_wal_end >= target:
                break
            stream.request_position()
        _add(total, stream.flush())
        if not total.rows:
            stream.acknowledge_idle()
    finally:
        stream.close()
    return total


def record_flush(
    state_conn: psycopg.Connection,
    sync: LakehouseSync,
    flushed: Flushed,
    *,
    failed: dict[str, str],
    state: str = states.ONLINE_NO_PENDING_UPDATE,
) -> None:
    """The state row after landing changes: online, or failed tables named."""
    failures = {**failed, **flushed.failed}
    message = "; ".join(f"{t}: {m}" for t, m in sorted(failures.items()))
    record_lakehouse_state(
        state_conn, name=sync.name, mode=sync.mode,
        state=states.ONLINE_PIPELINE_FAILED if failures else state, message=message,
        last_lsn=flushed.last_lsn, last_commit_time=flushed.last_commit_time,
        failed_tables=failures,
    )  # fmt: skip


def record_failure(sync: LakehouseSync, dsn: str, exc: Exception) -> None:
    """Record that `sync` stopped on `exc` (online-failed when Delta serves data already)."""
    try:
        with connect(dsn, autocommit=True) as conn:
            _record_failure(conn, sync, exc)
    except ReverseEtlError as state_error:
        log.warning("%s: could not record the failure: %s", sync.name, state_error)


def _record_failure(state_conn: psycopg.Connection, sync: LakehouseSync, exc: Exception) -> None:
    if isinstance(exc, SlotActive):
        return  # another follower streams: the sync is healthy, this process just may not run
    stored = read_lakehouse_state(state_conn, sync.name)
    serving = stored is not None and stored.last_lsn is not None
    state = states.ONLINE_PIPELINE_FAILED if serving else states.OFFLINE_FAILED
    if isinstance(exc, SpecError | ReverseEtlError | psycopg.Error):
        try:
            record_lakehouse_state(
                state_conn, name=sync.name, mode=sync.mode, state=state, message=str(exc)
            )
        except psycopg.Error as state_error:
            log.warning("%s: could not record the failure: %s", sync.name, state_error)


def combine_results(results: list[LakehouseResult]) -> LakehouseResult:
    """Several flushes (of a follower) as one result: counts added, the last LSN kept."""
    total = replace(
        results[0],
        changes=dict(results[0].changes),
        table_changes={t: dict(c) for t, c in results[0].table_changes.items()},
        snapshot_rows=dict(results[0].snapshot_rows),
        failed_tables=dict(results[0].failed_tables),
    )
    for part in results[1:]:
        total.rows += part.rows
        total.seconds += part.seconds
        if part.last_lsn is not None:
            total.last_lsn = part.last_lsn
        if part.path == "snapshot" or total.path == "none":
            total.path = part.path
        _add_counts(total.changes, part.changes)
        _add_table_counts(total.table_changes, part.table_changes)
        total.snapshot_rows.update(part.snapshot_rows)
        total.failed_tables.update(part.failed_tables)
    return total


def _add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for kind, count in counts.items():
        into[kind] = into.get(kind, 0) + count


def _add_table_counts(into: dict[str, dict[str, int]], counts: dict[str, dict[str, int]]) -> None:
    for table, by_kind in counts.items():
        _add_counts(into.setdefault(table, {}), by_kind)


def _add(total: Flushed, part: Flushed) -> None:
    total.rows += part.rows
    _add_counts(total.by_type, part.by_type)
    _add_table_counts(total.by_table, part.by_table)
    total.tables = sorted({*total.tables, *part.tables})
    total.failed.update(part.failed)
    if part.last_lsn is not None:
        total.last_lsn = part.last_lsn
        total.last_commit_time = part.last_commit_time
