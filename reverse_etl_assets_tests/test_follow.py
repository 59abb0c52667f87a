"""The continuous follower against real Postgres and Delta: exactly once across kill -9, a
Postgres restart and dropped connections; clean shutdown; one follower per table; status."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake

from reverse_etl_assets.dev import embedded_postgres
from reverse_etl_assets.errors import SpecError, TransientError
from reverse_etl_assets.pipelines.delta_to_postgres import follow, states
from reverse_etl_assets.pipelines.delta_to_postgres.follow import (
    FollowSummary,
    follow_table,
    follower_dsn,
)
from reverse_etl_assets.pipelines.delta_to_postgres.incremental import SchemaChangeError
from reverse_etl_assets.pipelines.delta_to_postgres.result import SyncResult
from reverse_etl_assets.pipelines.delta_to_postgres.status import table_status
from reverse_etl_assets.postgres import state
from reverse_etl_assets.postgres.state import TableState
from reverse_etl_assets.spec import SyncedTable
from reverse_etl_assets_tests.helpers import (
    delta_rows,
    fetch,
    items,
    one_table,
    postgres_rows,
    write_delta,
)

NAME = "lakebase.gold.items_synced"
CLI = [sys.executable, "-m", "reverse_etl_assets.cli"]


def stored(dsn: str) -> TableState | None:
    with psycopg.connect(dsn) as conn:
        found = conn.execute("SELECT to_regclass('reverse_etl.synced_tables')").fetchone()
        if found is None or found[0] is None:
            return None
        return state.read_state(conn, NAME)


def checkpoint(dsn: str) -> int | None:
    current = stored(dsn)
    return current.last_synced_version if current is not None else None


def heartbeat(dsn: str) -> object:
    current = stored(dsn)
    return current.heartbeat_at if current is not None else None


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def continuous(tmp_path: Path, src: Path, **extra: object) -> SyncedTable:
    extra.setdefault("poll_interval_seconds", 0.2)
    return one_table(tmp_path, source=str(src), primary_key=["id"], mode="continuous", **extra)


@dataclass
class Following:
    """A follower running in a thread of the test process."""

    stop: threading.Event
    thread: threading.Thread
    synced: list[SyncResult] = field(default_factory=list)
    outcome: dict[str, Any] = field(default_factory=dict)

    def finish(self) -> FollowSummary:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        if "error" in self.outcome:
            raise self.outcome["error"]
        summary: FollowSummary = self.outcome["summary"]
        return summary


@contextmanager
def following(table: SyncedTable, dsn: str) -> Iterator[Following]:
    run = Following(stop=threading.Event(), thread=threading.Thread(target=lambda: None))

    def body() -> None:
        try:
            run.outcome["summary"] = follow_table(
                table, dsn, stop=run.stop, on_sync=run.synced.append
            )
        except BaseException as exc:
            run.outcome["error"] = exc

    run.thread = threading.Thread(target=body, daemon=True)
    run.thread.start()
    try:
        yield run
    finally:
        run.stop.set()
        run.thread.join(timeout=60)


def spec_env(tmp_path: Path, dsn: str, **extra: object) -> dict[str, str]:
    """Env for a `reverse-etl` subprocess following analytics.gold.items under tmp_path/lake."""
    entry = {"name": NAME, "source": "analytics.gold.items", "primary_key": ["id"],
             "mode": "continuous", "poll_interval_seconds": 0.2, **extra}  # fmt: skip
    spec = tmp_path / "synced_tables.yaml"
    spec.write_text(yaml.safe_dump({"lake_root": str(tmp_path / "lake"), "synced_tables": [entry]}))
    return {**os.environ, "REVERSE_ETL_SPEC": str(spec), "REVERSE_ETL_PG_DSN": dsn}


def start_cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def status_json(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [*CLI, "status", NAME, "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)[0]
    return found


def apply_in_flight(dsn: str) -> bool:
    """The follower is inside an apply transaction (staging or upserting the changes)."""
    busy = fetch(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'WITH written%%' "
        'OR query LIKE \'COPY "pg_temp"."_retl_upserts"%%\'',
    )
    return bool(busy[0][0])


# Pure pieces.


def test_follower_dsn_names_the_session_and_keeps_given_settings() -> None:
    dsn = follower_dsn(
        "postgresql://u@db:5433/app?connect_timeout=30", application_name="reverse_etl follower x"
    )
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    assert params["application_name"] == "reverse_etl follower x"
    assert params["connect_timeout"] == "30"  # the DSN's own setting wins
    assert params["keepalives_idle"] == "5" and params["tcp_user_timeout"] == "15000"
    assert (params["host"], params["port"], params["dbname"]) == ("db", "5433", "app")


def test_add_columns_statement_quotes_names() -> None:
    text = state.add_columns_statement(["heartbeat_at", "follower_pid"]).as_string(None)
    assert text == (
        'ALTER TABLE "reverse_etl"."synced_tables" ADD COLUMN IF NOT EXISTS "heartbeat_at" '
        'timestamptz, ADD COLUMN IF NOT EXISTS "follower_pid" integer'
    )


def test_follow_refuses_a_table_that_is_not_continuous(tmp_path: Path) -> None:
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    with pytest.raises(SpecError, match="set `mode: continuous`"):
        follow_table(table, "postgresql://unused")


# State table.


def test_an_older_state_table_gains_the_heartbeat_columns(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA reverse_etl")
        conn.execute(
            "CREATE TABLE reverse_etl.synced_tables (name text PRIMARY KEY, source text NOT NULL, "
            "mode text NOT NULL, table_id text, last_synced_version bigint, last_sync_time "
            "timestamptz, rows bigint, skipped_null_keys bigint NOT NULL DEFAULT 0, state text "
            "NOT NULL, message text NOT NULL DEFAULT '', updated_at timestamptz NOT NULL "
            "DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO reverse_etl.synced_tables (name, source, mode, last_synced_version, "
            "state) VALUES (%s, 's', 'continuous', 3, 'SYNCED_TABLE_ONLINE_NO_PENDING_UPDATE')",
            (NAME,),
        )
        state.ensure_state_table(conn)
        state.ensure_state_table(conn)  # idempotent
        assert state.record_heartbeat(conn, name=NAME, pid=42, host="h")
        found = state.read_state(conn, NAME)
    assert found is not None and found.last_synced_version == 3
    assert (found.follower_pid, found.follower_host) == (42, "h")
    assert found.heartbeat_at is not None and found.read_at is not None
    assert found.read_at >= found.heartbeat_at


def test_a_checkpoint_that_moved_is_not_overwritten(pg_dsn: str, tmp_path: Path) -> None:
    table = one_table(tmp_path, name=NAME, source=str(tmp_path / "src"), primary_key=["id"],
                      mode="continuous")  # fmt: skip
    saved = {"table_id": "t", "rows": 1, "skipped_null_keys": 0,
             "state": states.ONLINE_NO_PENDING_UPDATE}  # fmt: skip
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        state.ensure_state_table(conn)
        state.save_checkpoint(conn, table, version=5, **saved)  # type: ignore[arg-type]
        with pytest.raises(TransientError, match="moved away from version 4"), conn.transaction():
            state.save_checkpoint(conn, table, version=6, expected_version=4, **saved)  # type: ignore[arg-type]
        state.save_checkpoint(conn, table, version=6, expected_version=5, **saved)  # type: ignore[arg-type]
        found = state.read_state(conn, NAME)
    assert found is not None and found.last_synced_version == 6


# The follower in process.


def test_follower_snapshots_then_applies_each_version_and_batches_bursts(
    tmp_path: Path, pg_dsn: str
) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(100)))
    table = continuous(tmp_path, src, poll_interval_seconds=1)
    with following(table, pg_dsn) as run:
        wait_until(lambda: checkpoint(pg_dsn) == 0, timeout=30, what="the initial snapshot")
        # The checkpoint commits before the follower reports the sync: wait for the report too.
        wait_until(lambda: bool(run.synced), timeout=10, what="the snapshot's report")
        assert run.synced[0].path == "snapshot"
        DeltaTable(str(src)).update(updates={"v": "'changed'"}, predicate="id < 10")
        wait_until(lambda: checkpoint(pg_dsn) == 1, timeout=10, what="version 1")
        assert postgres_rows(pg_dsn) == delta_rows(src)
        for i in range(20):  # a burst: far faster than the poll interval
            write_delta(src, items([1000 + i]))
        DeltaTable(str(src)).delete("id = 50")
        wait_until(lambda: checkpoint(pg_dsn) == 22, timeout=15, what="the burst")
        assert postgres_rows(pg_dsn) == delta_rows(src)
        summary = run.finish()
    applied = [r.version for r in run.synced]
    assert applied == sorted(set(applied)) and applied[-1] == 22
    assert max(b - a for a, b in itertools.pairwise(applied)) > 1  # one transaction
    assert summary.version == 22 and summary.versions == 22 and summary.reconnects == 0
    final = stored(pg_dsn)
    assert final is not None and final.rows == 119 and final.heartbeat_at is None


def test_status_follows_the_follower(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(10)))
    # A long poll interval: after its first sync the follower sleeps and lag builds up.
    table = continuous(tmp_path, src, poll_interval_seconds=30)
    with following(table, pg_dsn) as run:
        wait_until(lambda: checkpoint(pg_dsn) == 0, timeout=30, what="the initial snapshot")
        wait_until(lambda: heartbeat(pg_dsn) is not None, timeout=5, what="a heartbeat")
        now = table_status(table, stored(pg_dsn))
        assert now.detailed_state == states.ONLINE_CONTINUOUS_UPDATE
        assert now.lag_versions == 0 and "up to date" in now.message
        write_delta(src, items([10]))
        write_delta(src, items([11]))
        lagging = table_status(table, stored(pg_dsn))
        assert lagging.detailed_state == states.ONLINE_CONTINUOUS_UPDATE
        assert lagging.lag_versions == 2 and lagging.lag_seconds is not None
        assert f"pid {os.getpid()}" in lagging.message
        run.finish()
    stopped = table_status(table, stored(pg_dsn))  # stopped cleanly: not a failure
    assert stopped.detailed_state == states.ONLINE_CONTINUOUS_UPDATE
    assert "no follower is running" in stopped.message


def test_a_terminal_error_stops_the_follower_with_the_failure_recorded(
    tmp_path: Path, pg_dsn: str
) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(20)))
    table = continuous(tmp_path, src)
    with following(table, pg_dsn) as run:
        wait_until(lambda: checkpoint(pg_dsn) == 0, timeout=30, what="the initial snapshot")
        before = postgres_rows(pg_dsn)
        dropped = pa.table({"id": pa.array(range(20), pa.int64())})
        write_deltalake(str(src), dropped, mode="overwrite", schema_mode="overwrite")
        run.thread.join(timeout=30)
        assert not run.thread.is_alive()
    assert isinstance(run.outcome.get("error"), SchemaChangeError)
    assert postgres_rows(pg_dsn) == before
    failed = table_status(table, stored(pg_dsn))
    assert failed.detailed_state == states.ONLINE_PIPELINE_FAILED
    assert "column 'v' was dropped" in failed.message


def test_a_recreated_source_is_fully_refreshed(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Recreated with fewer versions, the table has no "next commit" to poll: the periodic full
    # check (shortened here) is what notices.
    monkeypatch.setattr(follow, "FULL_CHECK_SECONDS", 0.5)
    src = tmp_path / "src"
    write_delta(src, items(range(10)))
    write_delta(src, items(range(10, 20)))
    table = continuous(tmp_path, src)
    with following(table, pg_dsn) as run:
        wait_until(lambda: checkpoint(pg_dsn) == 1, timeout=30, what="the initial snapshot")
        shutil.rmtree(src)
        time.sleep(1.5)  # the follower meets a missing source meanwhile: it must wait it out
        write_delta(src, items(range(3), "fresh"))
        wait_until(lambda: postgres_rows(pg_dsn) == delta_rows(src), timeout=15, what="refresh")
        run.finish()
    assert "recreated" in run.synced[-1].reason and checkpoint(pg_dsn) == 0


def test_dropped_connections_are_reopened_and_nothing_is_lost(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(50)))
    table = continuous(tmp_path, src)
    with following(table, pg_dsn) as run:
        wait_until(lambda: checkpoint(pg_dsn) == 0, timeout=30, what="the initial snapshot")
        ended = fetch(
            pg_dsn,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name LIKE 'reverse_etl follower %%'",
        )
        assert ended[0][0] >= 1
        for i in range(3):
            write_delta(src, items([100 + i]))
        wait_until(lambda: checkpoint(pg_dsn) == 3, timeout=30, what="catching up")
        # Its lock came back with the new session: a second follower is still refused.
        with pytest.raises(follow.FollowerBusy):
            follow_table(table, pg_dsn, max_seconds=1)
        summary = run.finish()
    assert summary.reconnects >= 1
    assert postgres_rows(pg_dsn) == delta_rows(src)
    final = stored(pg_dsn)
    assert final is not None and final.rows == 53 and final.heartbeat_at is None


class SeveringProxy:
    """A TCP proxy to Postgres that can cut its clients off while keeping the server's side of
    each connection open: what a network drop looks like to the server (sessions it keeps)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.clients: list[socket.socket] = []
        self.servers: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.clients.append(client)
            self.servers.append(server)
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass  # one side was cut: leave the other as it is

    def cut_clients(self) -> None:
        for client in self.clients:
            with contextlib.suppress(OSError):  # already gone with its process
                client.shutdown(socket.SHUT_RDWR)
            client.close()
        self.clients.clear()

    def close(self) -> None:
        self.listener.close()
        self.cut_clients()
        for server in self.servers:
            server.close()


def test_a_network_drop_leaves_orphan_sessions_the_follower_ends(
    tmp_path: Path, pg_dsn: str
) -> None:
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    proxy = SeveringProxy(str(params["host"]), int(str(params["port"])))
    proxied = psycopg.conninfo.make_conninfo(pg_dsn, port=str(proxy.port))
    src = tmp_path / "src"
    write_delta(src, items(range(50)))
    table = continuous(tmp_path, src)
    try:
        with following(table, proxied) as run:
            wait_until(lambda: checkpoint(pg_dsn) == 0, timeout=30, what="the initial snapshot")
            proxy.cut_clients()
            write_delta(src, items([100]))
            # The server still has the old session, holding the table's lock: the follower ends
            # it (it is its own) instead of finding the table busy.
            wait_until(lambda: checkpoint(pg_dsn) == 1, timeout=30, what="catching up")
            summary = run.finish()
    finally:
        proxy.close()
    assert summary.reconnects >= 1
    assert postgres_rows(pg_dsn) == delta_rows(src)


@pytest.mark.slow
def test_a_new_follower_takes_over_from_one_lost_with_its_machine(
    tmp_path: Path, pg_dsn: str
) -> None:
    # Killed behind the proxy, the follower's sessions stay open on the server, holding the
    # lock, as when its machine or network is lost; only its heartbeat stops.
    params = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    proxy = SeveringProxy(str(params["host"]), int(str(params["port"])))
    proxied = psycopg.conninfo.make_conninfo(pg_dsn, port=str(proxy.port))
    src = tmp_path / "lake/analytics/gold/items"
    write_delta(src, items(range(100)))
    try:
        lost = start_cli(spec_env(tmp_path, proxied), "follow", NAME)
        wait_until(lambda: checkpoint(pg_dsn) == 0, timeout=60, what="the initial snapshot")
        wait_until(lambda: heartbeat(pg_dsn) is not None, timeout=10, what="a heartbeat")
        os.kill(lost.pid, signal.SIGKILL)
        lost.wait(timeout=30)
        env = spec_env(tmp_path, pg_dsn)
        assert fetch(
            pg_dsn,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
        ) == [(1,)]
        wait_until(
            lambda: status_json(env)["detailed_state"] == states.ONLINE_PIPELINE_FAILED,
            timeout=30,
            what="the lost follower to show as dead",
        )
        write_delta(src, items([100]))
        done = subprocess.run(
            [*CLI, "follow", NAME, "--max-seconds", "3"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr
    assert f"the follower pid {lost.pid} on " in done.stderr and "taking over" in done.stderr
    assert checkpoint(pg_dsn) == 1 and postgres_rows(pg_dsn) == delta_rows(src)


# The follower as a command.


def test_follow_command_takes_the_snapshot_and_exits_0_after_max_seconds(
    tmp_path: Path, pg_dsn: str
) -> None:
    write_delta(tmp_path / "lake/analytics/gold/items", items(range(5)))
    env = spec_env(tmp_path, pg_dsn)
    done = subprocess.run(
        [*CLI, "follow", NAME, "--max-seconds", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"synced {NAME}: version 0, 5 rows copied" in done.stdout
    assert f"stopped following {NAME} at version 0" in done.stdout
    assert postgres_rows(pg_dsn) == delta_rows(tmp_path / "lake/analytics/gold/items")
    assert status_json(env)["detailed_state"] == states.ONLINE_NO_PENDING_UPDATE


def test_a_second_follower_is_refused(tmp_path: Path, pg_dsn: str) -> None:
    write_delta(tmp_path / "lake/analytics/gold/items", items(range(5)))
    env = spec_env(tmp_path, pg_dsn)
    first = start_cli(env, "follow", NAME)
    try:
        wait_until(lambda: checkpoint(pg_dsn) == 0, timeout=60, what="the first follower")
        second = subprocess.run(
            [*CLI, "follow", NAME], env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 1
        assert "already being synced" in second.stderr
        assert f"the follower pid {first.pid}" in second.stderr
        assert first.poll() is None  # the first one keeps following
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    assert first.returncode == 0


@pytest.mark.slow
def test_sigterm_mid_batch_finishes_it_and_exits_0(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "lake/analytics/gold/items"
    write_delta(src, items(range(300_000)))
    env = spec_env(tmp_path, pg_dsn, full_refresh_threshold=0.5)
    proc = start_cli(env, "follow", NAME)
    try:
        wait_until(lambda: checkpoint(pg_dsn) == 0, timeout=120, what="the initial snapshot")
        DeltaTable(str(src)).update(updates={"v": "'changed'"}, predicate="id % 3 = 0")
        wait_until(lambda: apply_in_flight(pg_dsn), timeout=60, what="the batch to start")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM: stopping after the batch in flight" in err
    assert f"stopped following {NAME} at version 1" in out
    assert checkpoint(pg_dsn) == 1
    assert fetch(pg_dsn, "SELECT count(*) FROM gold.items_synced WHERE v = 'changed'") == [
        (100_000,)
    ]
    final = stored(pg_dsn)
    assert final is not None and final.heartbeat_at is None  # a clean stop, not a death


@pytest.mark.slow
def test_kill_9_mid_batch_then_a_new_follower_catches_up_exactly_once(
    tmp_path: Path, pg_dsn: str
) -> None:
    src = tmp_path / "lake/analytics/gold/items"
    n = 300_000
    write_delta(src, items(range(n)))
    env = spec_env(tmp_path, pg_dsn, full_refresh_threshold=0.5)
    proc = start_cli(env, "follow", NAME)
    try:
        wait_until(lambda: checkpoint(pg_dsn) == 0, timeout=120, what="the initial snapshot")
        DeltaTable(str(src)).update(updates={"v": "'changed'"}, predicate="id % 3 = 0")
        wait_until(lambda: apply_in_flight(pg_dsn), timeout=60, what="the batch to start")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    # Postgres still equals Delta at the old version, its checkpoint says so.
    assert checkpoint(pg_dsn) == 0
    assert fetch(pg_dsn, "SELECT count(*) FROM gold.items_synced WHERE v = 'changed'") == [(0,)]
    # The dead follower shows as failed once its heartbeat is stale.
    wait_until(
        lambda: status_json(env)["detailed_state"] == states.ONLINE_PIPELINE_FAILED,
        timeout=30,
        what="the status to show the dead follower",
    )
    assert f"the follower (pid {proc.pid} on " in status_json(env)["message"]

    DeltaTable(str(src)).delete("id < 1000")
    write_delta(src, items(range(n, n + 500), "new"))
    again = start_cli(env, "follow", NAME, "--max-seconds", "60")
    try:
        wait_until(lambda: checkpoint(pg_dsn) == 3, timeout=90, what="the catch-up")
        status = status_json(env)
        assert status["detailed_state"] == states.ONLINE_CONTINUOUS_UPDATE
        assert status["lag_versions"] == 0
    finally:
        again.send_signal(signal.SIGTERM)
        out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert f"synced {NAME}: version 3, " in out  # the three versions in one transaction
    counted = fetch(
        pg_dsn,
        "SELECT count(*), count(*) FILTER (WHERE v = 'changed'), min(id), max(id) "
        "FROM gold.items_synced",
    )
    changed = len([i for i in range(1000, n) if i % 3 == 0])
    assert counted == [(n - 1000 + 500, changed, 1000, n + 499)]
    final = stored(pg_dsn)
    assert final is not None and final.rows == n - 1000 + 500


@pytest.mark.slow
def test_postgres_restart_while_following(tmp_path: Path) -> None:
    # A cluster of its own: the session's server is shared by the other tests.
    cluster = tmp_path / "pg"
    dsn = embedded_postgres.ensure_running(cluster)
    try:
        src = tmp_path / "lake/analytics/gold/items"
        write_delta(src, items(range(1000)))
        env = spec_env(tmp_path, dsn)
        proc = start_cli(env, "follow", NAME)
        try:
            wait_until(lambda: checkpoint(dsn) == 0, timeout=60, what="the initial snapshot")
            write_delta(src, items([1000]))
            wait_until(lambda: checkpoint(dsn) == 1, timeout=30, what="version 1")
            embedded_postgres.stop(cluster)
            DeltaTable(str(src)).update(updates={"v": "'while down'"}, predicate="id < 10")
            write_delta(src, items([1001, 1002]))
            time.sleep(2)  # the follower fails to reach Postgres and backs off
            assert proc.poll() is None
            assert embedded_postgres.ensure_running(cluster) == dsn
            wait_until(lambda: checkpoint(dsn) == 3, timeout=60, what="the catch-up")
            assert postgres_rows(dsn) == delta_rows(src)
            assert status_json(env)["detailed_state"] == states.ONLINE_CONTINUOUS_UPDATE
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "retrying in" in err and "reconnected" in err
        final = stored(dsn)
        assert final is not None and final.rows == 1003 and final.heartbeat_at is None
    finally:
        embedded_postgres.stop(cluster)
