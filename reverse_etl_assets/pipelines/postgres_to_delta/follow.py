"""`reverse-etl follow NAME` for a lakehouse sync: stream the slot, commit to Delta at least every
`flush_interval_seconds`, heartbeat, and reconnect with backoff when Postgres or the store blips.

A `runtime.loop` worker. One follower per slot: the server refuses a second stream on an active
slot, and the refusal names the pid that holds it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import psycopg

from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.pipelines.postgres_to_delta import states
from reverse_etl_assets.pipelines.postgres_to_delta.run import (
    LakehouseResult,
    check_slot_kept,
    record_failure,
    record_flush,
    source_dsn,
    sync_lakehouse,
)
from reverse_etl_assets.pipelines.postgres_to_delta.stream import (
    MAX_BATCH_ROWS,
    Batch,
    ChangeStream,
    Flushed,
)
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.lakehouse_state import (
    read_lakehouse_ack,
    read_lakehouse_state,
    record_lakehouse_ack,
    record_lakehouse_heartbeat,
)
from reverse_etl_assets.postgres.replication import slot as slots
from reverse_etl_assets.runtime.loop import run_worker
from reverse_etl_assets.spec import LakehouseSync

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
# Confirm an idle slot's position this often, so it does not hold other databases' WAL.
IDLE_ACK_SECONDS = 10.0
RECEIVE_SECONDS = 0.25


@dataclass(frozen=True, kw_only=True)
class LakehouseFollowSummary:
    """What one follower did before it stopped."""

    name: str
    last_lsn: int | None
    flushes: int
    changes: int
    reconnects: int
    seconds: float


def follow_lakehouse(
    sync: LakehouseSync,
    dsn: str,
    *,
    max_seconds: float | None = None,
    stop: threading.Event | None = None,
    on_flush: Callable[[LakehouseResult], None] | None = None,
) -> LakehouseFollowSummary:
    """Stream `sync` until `stop` is set or `max_seconds` pass; the first run snapshots first."""
    if sync.mode != "continuous":
        raise SpecError(
            f"lakehouse sync {sync.name!r}: `follow` runs continuous lakehouse syncs, this one is "
            f"{sync.mode}; set `mode: continuous` (or use `reverse-etl sync {sync.name}`)"
        )
    worker = _Follower(sync, dsn, on_flush=on_flush)
    try:
        seconds = run_worker(
            worker, stop=stop or threading.Event(), max_seconds=max_seconds, idle_seconds=0.0
        )
    except Exception as exc:
        record_failure(sync, dsn, exc)
        raise
    return LakehouseFollowSummary(
        name=sync.name,
        last_lsn=worker.last_lsn,
        flushes=worker.flushes,
        changes=worker.changes,
        reconnects=max(worker.sessions - 1, 0),
        seconds=seconds,
    )


class _Follower:
    """The streaming worker: has_more receives, apply lands and acknowledges."""

    def __init__(
        self,
        sync: LakehouseSync,
        dsn: str,
        *,
        on_flush: Callable[[LakehouseResult], None] | None,
    ) -> None:
        self.name = sync.name
        self.sync = sync
        self.dsn = dsn
        self.source = source_dsn(sync, dsn)
        self.on_flush = on_flush
        self.stream: ChangeStream | None = None
        self.state: psycopg.Connection | None = None
        self.sessions = 0
        self.flushes = 0
        self.changes = 0
        self.last_lsn: int | None = None
        self.caught_up = False
        self.failed: dict[str, str] = {}
        self.next_beat = 0.0
        self.next_idle_ack = 0.0
        self.landing: Future[tuple[Batch, Flushed, float]] | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="landing")

    def has_more(self) -> bool:
        """Connect when needed, finish a landing that completed, receive for a moment; True
        when a flush is due and no landing is under way."""
        if not self.caught_up:
            self._catch_up()
        if self.stream is None:
            self._open()
        assert self.stream is not None
        self._beat()
        if self.landing is not None and (
            self.landing.done() or self.stream.pending_rows >= MAX_BATCH_ROWS
        ):
            self._finish_landing()  # done, or the next batch is full: wait for it (bounded memory)
        self.stream.receive(RECEIVE_SECONDS)
        if not self.stream.has_pending and time.monotonic() >= self.next_idle_ack:
            self.stream.acknowledge_idle()
            self.next_idle_ack = time.monotonic() + IDLE_ACK_SECONDS
        return self.landing is None and self.stream.flush_due(self.sync.flush_interval_seconds)

    def apply(self) -> bool:
        """Start landing the whole transactions received, in a thread: the Delta writes release
        the GIL, so the next transactions are received and decoded meanwhile. They are
        acknowledged once landed."""
        assert self.stream is not None
        batch = self.stream.take()
        self.landing = self.executor.submit(self._land, self.stream, batch)
        return True

    def recover(self) -> None:
        """Drop the session: what was received but not landed comes again after reconnecting."""
        self._abandon_landing()
        self._close_session()

    def close(self) -> None:
        """Land the whole transactions already received (SIGTERM finishes them), then stop."""
        try:
            if self.landing is not None:
                self._finish_landing()
            if self.stream is not None and self.stream.has_pending:
                self.apply()
                self._finish_landing()
            if self.state is not None:
                record_lakehouse_heartbeat(self.state, name=self.sync.name, pid=None)
                stored = read_lakehouse_state(self.state, self.sync.name)
                if stored is not None and stored.state == states.ONLINE_CONTINUOUS_UPDATE:
                    record_flush(self.state, self.sync, Flushed(), failed=self.failed)
        except Exception as exc:
            log.warning("%s: could not finish cleanly: %s", self.sync.name, exc)
        finally:
            self._abandon_landing()
            self._close_session()
            self.executor.shutdown(wait=True)

    def _catch_up(self) -> None:
        """Before streaming: the snapshot when there is none, and a drain of what waits. In the
        loop, so Postgres gone meanwhile is waited out as during the stream."""
        first = sync_lakehouse(self.sync, self.dsn)
        self.caught_up = True
        self.last_lsn = first.last_lsn
        if self.on_flush is not None and first.path != "none":
            self.on_flush(first)

    def _land(self, stream: ChangeStream, batch: Batch) -> tuple[Batch, Flushed, float]:
        started = time.monotonic()
        return batch, stream.land(batch), time.monotonic() - started

    def _finish_landing(self) -> None:
        """Wait for the landing under way, acknowledge it, record it; its error is raised."""
        assert self.landing is not None and self.stream is not None and self.state is not None
        landing, self.landing = self.landing, None
        batch, flushed, seconds = landing.result()
        if batch.end_lsn is not None:
            self.stream.acknowledge(batch.end_lsn)
        self.failed.update(flushed.failed)
        record_flush(
            self.state, self.sync, flushed, failed=self.failed,
            state=states.ONLINE_CONTINUOUS_UPDATE,
        )  # fmt: skip
        self.flushes += 1
        self.changes += flushed.rows
        if flushed.last_lsn is not None:
            self.last_lsn = flushed.last_lsn
        if self.on_flush is not None:
            self.on_flush(
                LakehouseResult(
                    name=self.sync.name, path="stream", last_lsn=flushed.last_lsn,
                    rows=flushed.rows, changes=flushed.by_type, table_changes=flushed.by_table,
                    failed_tables=flushed.failed,
                    seconds=seconds,
                )
            )  # fmt: skip

    def _abandon_landing(self) -> None:
        """After an error: let a landing under way end (never acknowledged: it comes again)."""
        if self.landing is not None:
            landing, self.landing = self.landing, None
            with contextlib.suppress(Exception):
                landing.result()

    def _open(self) -> None:
        state = connect(self.dsn, autocommit=True)
        try:
            stored = read_lakehouse_state(state, self.sync.name)
            self.failed = dict(stored.failed_tables) if stored is not None else {}
            if self.sessions:  # a reconnect: the slot must still be the one left off
                with connect(self.source, autocommit=True) as source:
                    info = slots.slot_info(source, self.sync.slot)
                check_slot_kept(self.sync, info, acked=read_lakehouse_ack(state, self.sync.name))
            self.stream = ChangeStream(
                self.sync, self.source, failed_tables=self.failed,
                application_name=f"reverse_etl follower {self.sync.name}",
                on_acknowledge=lambda lsn: record_lakehouse_ack(state, name=self.name, lsn=lsn),
            )  # fmt: skip
        except BaseException:
            state.close()
            raise
        self.state = state
        self.sessions += 1
        if self.sessions > 1:
            log.info("%s: reconnected; catching up", self.sync.name)

    def _beat(self) -> None:
        if self.state is not None and time.monotonic() >= self.next_beat:
            record_lakehouse_heartbeat(self.state, name=self.sync.name, pid=os.getpid())
            self.next_beat = time.monotonic() + HEARTBEAT_SECONDS

    def _close_session(self) -> None:
        for closable in (self.stream, self.state):
            if closable is not None:
                try:
                    closable.close()
                except (psycopg.Error, OSError) as exc:
                    log.debug("%s: closing: %s", self.sync.name, exc)
        self.stream = None
        self.state = None
