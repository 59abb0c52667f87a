"""The continuous follower: watch the Delta log and land each new version in about a second.

A `runtime.loop` worker over `run.sync_locked`: it holds the table's lock for its whole life,
heartbeats into the state table, and reconnects with backoff when Postgres or the lake goes away.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import pyarrow.fs as pafs
from psycopg.conninfo import make_conninfo

from reverse_etl_assets.delta.log import commit_exists, open_log
from reverse_etl_assets.errors import ReverseEtlError, SpecError, TransientError
from reverse_etl_assets.pipelines.delta_to_postgres.preflight import check_readers
from reverse_etl_assets.pipelines.delta_to_postgres.result import SyncResult
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_locked
from reverse_etl_assets.postgres import protection, state
from reverse_etl_assets.postgres.connect import connect, parse_dsn
from reverse_etl_assets.postgres.locks import lock_holders, try_lock_table, unlock_table
from reverse_etl_assets.runtime.loop import run_worker
from reverse_etl_assets.spec import SyncedTable

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
# The cheap poll only sees a next commit; a table recreated at the same path with fewer versions
# has none, so the follower also opens the table (and compares its id) this often.
FULL_CHECK_SECONDS = 30.0
APPLICATION_PREFIX = "reverse_etl follower"
# libpq settings the follower adds unless the DSN sets them: a dead network is noticed in seconds,
# not after the OS's two hours of TCP keepalive.
CONNECTION_OPTIONS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
}


class FollowerBusy(ReverseEtlError):
    """Another follower (or a sync) holds the table's lock: two never run for one table."""


@dataclass(frozen=True, kw_only=True)
class FollowSummary:
    """What one follower did before it stopped."""

    name: str
    version: int | None
    batches: int
    versions: int
    reconnects: int
    seconds: float


def follower_timeout(table: SyncedTable) -> float:
    """Seconds without a heartbeat after which a follower of `table` counts as dead."""
    return 3 * max(table.poll_interval_seconds, HEARTBEAT_SECONDS) + 5.0


def follower_dsn(dsn: str, *, application_name: str) -> str:
    """`dsn` with the follower's session name and network timeouts (the DSN's own settings win)."""
    given = parse_dsn(dsn)  # a malformed DSN: a ConfigError that does not quote it
    extra = {k: v for k, v in CONNECTION_OPTIONS.items() if k not in given}
    return make_conninfo(dsn, application_name=application_name, **extra)


def follow_table(
    table: SyncedTable,
    dsn: str,
    *,
    max_seconds: float | None = None,
    stop: threading.Event | None = None,
    on_sync: Callable[[SyncResult], None] | None = None,
) -> FollowSummary:
    """Apply each new version of `table`'s source until `stop` is set or `max_seconds` pass.

    Takes the initial snapshot when there is none; versions that piled up land in one
    transaction. Lost connections are retried with backoff; a terminal error (bad data, a schema
    change, a bad spec, another follower) stops it, the failure recorded in the state table.
    """
    if table.mode != "continuous":
        raise SpecError(
            f"synced table {table.name!r}: `follow` runs continuous tables, this one is "
            f"{table.mode}; set `mode: continuous` (or use `reverse-etl sync {table.name}`)"
        )
    follower = _Follower(table, dsn, stop=stop or threading.Event(), on_sync=on_sync)
    return follower.run(max_seconds=max_seconds)


@dataclass(frozen=True, kw_only=True)
class _Identity:
    """Who a follower is, as shown in the state table and in pg_stat_activity."""

    pid: int
    host: str
    application_name: str


class _Follower:
    """The polling loop and its counters."""

    def __init__(
        self,
        table: SyncedTable,
        dsn: str,
        *,
        stop: threading.Event,
        on_sync: Callable[[SyncResult], None] | None,
    ) -> None:
        self.name = table.name
        self.table = table
        self.stop = stop
        self.on_sync = on_sync
        self.identity = _Identity(
            pid=os.getpid(),
            host=socket.gethostname(),
            application_name=f"{APPLICATION_PREFIX} {uuid.uuid4().hex[:12]}",
        )
        self.dsn = follower_dsn(dsn, application_name=self.identity.application_name)
        self.session: _Session | None = None
        self.sessions = 0
        self.log: pafs.FileSystem | None = None
        self.version: int | None = None
        self.batches = 0
        self.versions = 0
        self.next_full_check = 0.0

    def run(self, *, max_seconds: float | None) -> FollowSummary:
        """Poll, sync, sleep; until stopped. Always leaves the lock and the heartbeat cleanly."""
        seconds = run_worker(
            self,
            stop=self.stop,
            max_seconds=max_seconds,
            idle_seconds=self.table.poll_interval_seconds,
        )
        return FollowSummary(
            name=self.table.name,
            version=self.version,
            batches=self.batches,
            versions=self.versions,
            reconnects=max(self.sessions - 1, 0),
            seconds=seconds,
        )

    def has_more(self) -> bool:
        """Connect when needed; True when a next Delta commit exists or a full check is due."""
        if self.session is None:
            self.session = self._open_session()
            self.next_full_check = 0.0
        self.session.check()
        return time.monotonic() >= self.next_full_check or self._next_commit_exists()

    def apply(self) -> bool:
        """One sync of whatever versions wait; True when it landed something."""
        moved = self._sync()
        self.next_full_check = time.monotonic() + FULL_CHECK_SECONDS
        return moved

    def recover(self) -> None:
        """After an error keep the session if its connection (and so the lock) survived."""
        if self.session is not None and not self.session.alive():
            self.session.close(clean=False)
            self.session = None

    def close(self) -> None:
        """Clear the heartbeat and release the lock."""
        if self.session is not None:
            self.session.close(clean=True)
            self.session = None

    def _open_session(self) -> _Session:
        session = _Session.open(self.table, self.dsn, self.identity, after_loss=self.sessions > 0)
        self.sessions += 1
        # A batch cut off by the loss committed or not: the checkpoint says which.
        self.version = session.checkpoint()
        if self.sessions > 1:
            log.info("%s: reconnected to Postgres; catching up", self.table.name)
        return session

    def _next_commit_exists(self) -> bool:
        if self.version is None:
            return True
        if self.log is None:
            self.log = open_log(self.table.source_uri, storage_options=self.table.storage_options)
        return commit_exists(self.log, self.version + 1)

    def _sync(self) -> bool:
        """One sync on the lock's connection; True when it landed something."""
        assert self.session is not None
        before = self.version
        result = sync_locked(self.session.conn, self.table, self.dsn)
        self.version = result.version
        self.session.ensure_heartbeat()
        if result.path == "none":
            return False
        self.batches += 1
        if before is not None and result.version > before:
            self.versions += result.version - before
        log.debug(
            "%s: version %d via %s (%d changed keys) in %.2fs%s",
            self.table.name,
            result.version,
            result.path,
            result.changes,
            result.seconds,
            f" [{result.reason}]" if result.reason else "",
        )
        if self.on_sync is not None:
            self.on_sync(result)
        return True


class _Session:
    """The follower's connection to Postgres: it holds the table's lock for the follower's life,
    and a thread writes the heartbeat through it (a failed beat means the lock may be gone)."""

    def __init__(self, conn: psycopg.Connection, table: SyncedTable, identity: _Identity) -> None:
        self.conn = conn
        self.table = table
        self.identity = identity
        self.error: psycopg.Error | None = None
        self._stopping = threading.Event()
        self._abandoned = False
        self._recorded = False
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat {table.name}", daemon=True
        )

    @classmethod
    def open(
        cls, table: SyncedTable, dsn: str, identity: _Identity, *, after_loss: bool
    ) -> _Session:
        """Connect, take the lock (or raise FollowerBusy), start the heartbeat."""
        conn = connect(dsn, autocommit=True)
        try:
            check_readers(conn, table)
            state.ensure_state_table(conn)
            protection.ensure_guard_function(conn)
            if after_loss:
                _end_orphans(conn, identity.application_name)
            if not try_lock_table(conn, table.name) and not _take_over(conn, table):
                raise FollowerBusy(_busy_message(conn, table))
            session = cls(conn, table, identity)
            session._record_heartbeat()
            session._thread.start()
            return session
        except BaseException:
            conn.close()
            raise

    def check(self) -> None:
        """Raise when the heartbeat found the connection (and so, maybe, the lock) gone."""
        if self.error is not None:
            raise TransientError(f"lost the connection holding the lock: {self.error}")

    def ensure_heartbeat(self) -> None:
        """Beat now if no beat landed yet: the first sync of a table creates its state row."""
        if not self._recorded:
            self._record_heartbeat()

    def checkpoint(self) -> int | None:
        """The table's last synced version, as stored."""
        stored = state.read_state(self.conn, self.table.name)
        return stored.last_synced_version if stored is not None else None

    def alive(self) -> bool:
        """Whether the connection still answers (and so still holds the lock)."""
        if self.error is not None or self.conn.closed:
            return False
        try:
            self.conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def close(self, *, clean: bool) -> None:
        """Stop the heartbeat; on a clean stop also clear it (no follower, none died) and unlock."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=3 * HEARTBEAT_SECONDS)
        if self._thread.is_alive():
            # Blocked on a dead network: closing the connection under it is not thread-safe,
            # so the thread closes it when its write fails.
            self._abandoned = True
            return
        if clean and self.error is None and not self.conn.closed:
            try:
                state.clear_heartbeat(
                    self.conn,
                    name=self.table.name,
                    pid=self.identity.pid,
                    host=self.identity.host,
                )
                unlock_table(self.conn, self.table.name)
            except psycopg.Error as exc:
                log.warning("%s: could not clear the heartbeat: %s", self.table.name, exc)
        self.conn.close()

    def _record_heartbeat(self) -> None:
        self._recorded = state.record_heartbeat(
            self.conn, name=self.table.name, pid=self.identity.pid, host=self.identity.host
        )

    def _beat(self) -> None:
        try:
            while not self._stopping.wait(HEARTBEAT_SECONDS):
                self._record_heartbeat()
        except psycopg.Error as exc:
            self.error = exc
        finally:
            if self._abandoned:
                self.conn.close()


def _end_orphans(conn: psycopg.Connection, application_name: str) -> None:
    """End this follower's sessions from before a lost connection: after a network drop the
    server may keep them for hours, still holding the lock or an open transaction."""
    try:
        conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        )
    except psycopg.errors.InsufficientPrivilege as exc:
        log.warning("cannot end the follower's previous sessions: %s", exc)


def _take_over(conn: psycopg.Connection, table: SyncedTable) -> bool:
    """End the session holding the lock when it is a follower's whose heartbeat went stale: a
    lost machine or network leaves its session (and the lock) on the server for hours. True
    when the lock is now ours."""
    stored = state.read_state(conn, table.name)
    if stored is None or stored.heartbeat_at is None or stored.read_at is None:
        return False
    silent = (stored.read_at - stored.heartbeat_at).total_seconds()
    holders = lock_holders(conn, table.name)
    if silent <= follower_timeout(table) or not holders:
        return False
    if not all(name.startswith(APPLICATION_PREFIX) for _, name in holders):
        return False  # a sync, not a follower, holds it
    log.warning(
        "%s: the follower pid %s on %s sent no heartbeat for %.0fs but its session still holds "
        "the lock; ending that session and taking over",
        table.name,
        stored.follower_pid,
        stored.follower_host,
        silent,
    )
    try:
        for pid, _ in holders:
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    except psycopg.errors.InsufficientPrivilege as exc:
        log.warning("%s: cannot end that session: %s", table.name, exc)
        return False
    return try_lock_table(conn, table.name)


def _busy_message(conn: psycopg.Connection, table: SyncedTable) -> str:
    stored = state.read_state(conn, table.name)
    holder = "another follower or a sync"
    if stored is not None and stored.heartbeat_at is not None:
        holder = (
            f"the follower pid {stored.follower_pid} on {stored.follower_host} (last heartbeat "
            f"{stored.heartbeat_at.isoformat(timespec='seconds')}), or a sync"
        )
    return (
        f"synced table {table.name!r} is already being synced: {holder} holds its lock. Two "
        "followers never run for one table; stop the other one first (this one exits)"
    )
