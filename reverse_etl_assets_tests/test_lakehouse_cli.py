"""Lakehouse syncs through `reverse-etl`, as real subprocesses: validate, sync, status, verify,
delete, and the follower under kill -9, SIGTERM and a second follower."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from deltalake import DeltaTable

from reverse_etl_assets.dev import embedded_postgres
from reverse_etl_assets_tests.helpers import run_cli
from reverse_etl_assets_tests.lakehouse_helpers import delta_rows, execute, history

CLI = [sys.executable, "-m", "reverse_etl_assets.cli"]
SYNC = {"name": "app", "tables": ["public.orders"], "target": "bronze.app"}


def env_for(tmp_path: Path, pg_dsn: str, **entry: Any) -> dict[str, str]:
    sync = {**SYNC, **entry}
    spec = tmp_path / f"spec_{abs(hash(repr(sorted(sync.items()))))}.yaml"
    spec.write_text(
        yaml.safe_dump({"lake_root": str(tmp_path / "lake"), "lakehouse_syncs": [sync]})
    )
    return {**os.environ, "REVERSE_ETL_SPEC": str(spec), "REVERSE_ETL_PG_DSN": pg_dsn}


def mirror(tmp_path: Path) -> str:
    return str(tmp_path / "lake/bronze/app/orders")


def log_of(tmp_path: Path) -> str:
    return str(tmp_path / "lake/bronze/app/lb_orders_history")


def test_validate_sync_status_verify_delete(pg_dsn: str, tmp_path: Path) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE orders (id bigint PRIMARY KEY, v text)",
        "CREATE TABLE keyless (v text)",
        "INSERT INTO orders SELECT g, 'v' || g FROM generate_series(1, 100) g",
    )
    env = env_for(tmp_path, pg_dsn)
    validated = run_cli(env, "validate")
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "ok   app" in validated.stdout
    bad = run_cli(env_for(tmp_path, pg_dsn, tables=["public.keyless"]), "validate")
    assert bad.returncode == 1 and "no primary key" in bad.stdout and "Traceback" not in bad.stderr
    missing = run_cli(env_for(tmp_path, pg_dsn, tables=["public.nope"]), "validate")
    assert missing.returncode == 1 and "public.nope does not exist" in missing.stdout

    before = json.loads(run_cli(env, "status", "app", "--json").stdout)[0]
    assert (before["kind"], before["detailed_state"]) == (
        "lakehouse_sync",
        "LAKEHOUSE_SYNC_OFFLINE",
    )
    synced = run_cli(env, "sync", "app")
    assert synced.returncode == 0, synced.stderr
    execute(pg_dsn, "UPDATE orders SET v = 'w' WHERE id <= 5")
    assert run_cli(env, "sync", "app").returncode == 0
    status = json.loads(run_cli(env, "status", "app", "--json").stdout)[0]
    assert status["detailed_state"] == "LAKEHOUSE_SYNC_ONLINE_NO_PENDING_UPDATE"
    assert status["slot"] == "reverse_etl_app" and status["retained_wal_bytes"] is not None
    table = status["tables"][0]
    assert (table["table"], table["rows"], table["mirror"]) == (
        "public.orders",
        100,
        mirror(tmp_path),
    )
    assert table["last_lsn"] == status["last_lsn"]

    verified = run_cli(env, "verify", "app")
    assert verified.returncode == 0 and "100 rows equal" in verified.stdout
    # Tamper with the mirror behind the pipeline's back: verify names the keys.
    DeltaTable(mirror(tmp_path)).update(updates={"v": "'tampered'"}, predicate="id = 7")
    DeltaTable(mirror(tmp_path)).delete("id = 8")
    tampered = run_cli(env, "verify", "app")
    assert tampered.returncode == 1
    assert "missing in the mirror: id=8" in tampered.stdout
    assert "different values: id=7" in tampered.stdout

    deleted = run_cli(env, "delete", "app")
    assert deleted.returncode == 0 and "slot reverse_etl_app dropped" in deleted.stdout
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
    assert Path(mirror(tmp_path)).exists()  # the Delta tables stay without --drop-table


def start_follower(env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "follow", "app", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Any, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def server_now(dsn: str) -> Any:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]


def streaming_since(dsn: str, since: Any) -> bool:
    """A follower that connected after `since` streams from the sync's slot."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_activity a "
            "ON a.pid = s.active_pid WHERE s.slot_name = 'reverse_etl_app' "
            "AND a.backend_start > %s",
            (since,),
        ).fetchone()
    return row is not None and row[0] == 1


def history_ids(tmp_path: Path) -> list[int]:
    try:
        return [r["id"] for r in history(log_of(tmp_path)) if r["_pg_change_type"] == "insert"]
    except Exception:  # the table may not exist yet
        return []


@pytest.mark.slow
def test_follower_survives_kill_9_and_lands_every_change_once(pg_dsn: str, tmp_path: Path) -> None:
    execute(pg_dsn, "CREATE TABLE orders (id bigint PRIMARY KEY, v text)")
    env = env_for(tmp_path, pg_dsn)
    written = 0
    for round_ in range(3):
        follower = start_follower(env)
        try:
            wait_for(lambda: Path(log_of(tmp_path), "_delta_log").exists())
            for _ in range(20):  # writes keep coming while the follower lands them
                execute(pg_dsn, f"INSERT INTO orders VALUES ({written + 1}, 'r{round_}')")
                written += 1
                time.sleep(0.02)
            time.sleep(0.5 + round_ * 0.4)  # kill at a different point of the cycle each round
        finally:
            follower.send_signal(signal.SIGKILL)
            follower.wait(30)
    started = server_now(pg_dsn)
    follower = start_follower(env)
    try:
        wait_for(lambda: len(history_ids(tmp_path)) >= written)
        # Up and streaming (so it handles SIGTERM), even when the rows were all in already.
        wait_for(lambda: streaming_since(pg_dsn, started))
        time.sleep(2)  # anything written twice would show by now
    finally:
        follower.send_signal(signal.SIGTERM)
        _, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert sorted(history_ids(tmp_path)) == list(range(1, written + 1))  # each exactly once
    assert [r["id"] for r in delta_rows(mirror(tmp_path))] == list(range(1, written + 1))


@pytest.mark.slow
def test_a_second_follower_is_refused_and_sigterm_finishes_cleanly(
    pg_dsn: str, tmp_path: Path
) -> None:
    execute(pg_dsn, "CREATE TABLE orders (id bigint PRIMARY KEY, v text)")
    env = env_for(tmp_path, pg_dsn, flush_interval_seconds=0.5)
    first = start_follower(env)
    try:
        wait_for(lambda: Path(log_of(tmp_path), "_delta_log").exists())
        execute(pg_dsn, "INSERT INTO orders VALUES (1, 'a')")
        started = time.monotonic()
        wait_for(lambda: history_ids(tmp_path) == [1], seconds=30)
        assert time.monotonic() - started < 10  # about a second behind, with margin
        second = run_cli(env, "follow", "app", "--max-seconds", "5")
        assert second.returncode == 1
        assert "another follower is streaming from slot reverse_etl_app" in second.stderr
        assert "Traceback" not in second.stderr
        status = json.loads(run_cli(env, "status", "app", "--json").stdout)[0]
        assert status["detailed_state"] == "LAKEHOUSE_SYNC_ONLINE_CONTINUOUS_UPDATE"
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert "stopped following app" in out
    status = json.loads(run_cli(env, "status", "app", "--json").stdout)[0]
    assert status["detailed_state"] == "LAKEHOUSE_SYNC_ONLINE_NO_PENDING_UPDATE"


@pytest.mark.slow
def test_follower_rides_out_a_dropped_connection_and_fails_clearly_on_a_dropped_slot(
    pg_dsn: str, tmp_path: Path
) -> None:
    execute(pg_dsn, "CREATE TABLE orders (id bigint PRIMARY KEY, v text)")
    env = env_for(tmp_path, pg_dsn)
    follower = start_follower(env)
    try:
        wait_for(lambda: Path(log_of(tmp_path), "_delta_log").exists())
        execute(pg_dsn, "INSERT INTO orders VALUES (1, 'a')")
        wait_for(lambda: history_ids(tmp_path) == [1])
        # The network drops the replication connection: the follower reconnects and goes on.
        execute(
            pg_dsn,
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE slot_name = 'reverse_etl_app'",
            "INSERT INTO orders VALUES (2, 'b')",
        )
        wait_for(lambda: history_ids(tmp_path) == [1, 2])
        # The slot is dropped behind its back: the follower stops and says what to do.
        wait_for(
            lambda: (
                psycopg.connect(pg_dsn, autocommit=True)
                .execute("SELECT count(*) FROM pg_replication_slots WHERE active_pid IS NOT NULL")
                .fetchone()
                == (1,)
            )
        )
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            pid = conn.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'reverse_etl_app'"
            ).fetchone()
            assert pid is not None
            conn.execute("SELECT pg_terminate_backend(%s)", pid)
            for _ in range(50):
                try:
                    conn.execute("SELECT pg_drop_replication_slot('reverse_etl_app')")
                    break
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.05)
        _, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 1
    assert "reverse_etl_app" in err and "Traceback" not in err
    status = json.loads(run_cli(env, "status", "app", "--json").stdout)[0]
    assert status["detailed_state"] == "LAKEHOUSE_SYNC_ONLINE_PIPELINE_FAILED"
    assert "--full-refresh" in status["message"]


def test_a_malformed_source_dsn_never_shows_its_password(pg_dsn: str, tmp_path: Path) -> None:
    env = env_for(tmp_path, pg_dsn, source_dsn_env="APP_PG_DSN")
    env["APP_PG_DSN"] = "postgresql://app:Zq9%Kp!Sekret@127.0.0.1/app"
    for command in (["sync", "app"], ["status", "app"], ["verify", "app"], ["validate"]):
        result = run_cli(env, *command)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "Sekret" not in output and "Traceback" not in output
        assert "APP_PG_DSN" in output


@pytest.mark.slow
def test_follower_waits_out_a_postgres_restart_and_loses_nothing(tmp_path: Path) -> None:
    # A cluster of its own: the session's server is shared by the other tests.
    cluster = tmp_path / "pg"
    dsn = embedded_postgres.ensure_running(cluster)
    try:
        execute(dsn, "CREATE TABLE orders (id bigint PRIMARY KEY, v text)")
        env = env_for(tmp_path, dsn)
        follower = start_follower(env)
        try:
            wait_for(lambda: Path(log_of(tmp_path), "_delta_log").exists())
            execute(dsn, "INSERT INTO orders VALUES (1, 'before')")
            wait_for(lambda: history_ids(tmp_path) == [1])
            embedded_postgres.stop(cluster)
            time.sleep(2)  # the follower cannot reach Postgres and backs off
            if follower.poll() is not None:
                pytest.fail(f"the follower stopped during the outage: {follower.communicate()[1]}")
            assert embedded_postgres.ensure_running(cluster) == dsn
            execute(dsn, "INSERT INTO orders VALUES (2, 'after')")
            wait_for(lambda: history_ids(tmp_path) == [1, 2])
        finally:
            follower.send_signal(signal.SIGTERM)
            _, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        assert "retrying in" in err  # it noticed the outage and backed off, then carried on
        assert [r["id"] for r in delta_rows(mirror(tmp_path))] == [1, 2]
    finally:
        embedded_postgres.stop(cluster)


@pytest.mark.slow
def test_follower_started_while_postgres_is_down_waits_for_it(tmp_path: Path) -> None:
    # Its first catch-up (the snapshot and a drain) meets the outage, not only its stream.
    cluster = tmp_path / "pg"
    dsn = embedded_postgres.ensure_running(cluster)
    try:
        execute(dsn, "CREATE TABLE orders (id bigint PRIMARY KEY, v text)")
        env = env_for(tmp_path, dsn)
        embedded_postgres.stop(cluster)
        follower = start_follower(env)
        try:
            time.sleep(3)
            if follower.poll() is not None:
                pytest.fail(f"the follower stopped during the outage: {follower.communicate()[1]}")
            assert embedded_postgres.ensure_running(cluster) == dsn
            execute(dsn, "INSERT INTO orders VALUES (1, 'after')")
            wait_for(lambda: Path(log_of(tmp_path), "_delta_log").exists())
            wait_for(lambda: history_ids(tmp_path) == [1])
        finally:
            follower.send_signal(signal.SIGTERM)
            _, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        assert "retrying in" in err and "Traceback" not in err
    finally:
        embedded_postgres.stop(cluster)


def test_validate_names_the_missing_replication_privilege_with_the_fix(
    pg_dsn: str, tmp_path: Path
) -> None:
    role = f"plain_{uuid.uuid4().hex[:8]}"
    execute(
        pg_dsn,
        "CREATE TABLE orders (id bigint PRIMARY KEY, v text)",
        f"CREATE ROLE {role} LOGIN",
    )
    try:
        scheme, rest = pg_dsn.split("://", 1)
        as_role = f"{scheme}://{role}@{rest.split('@', 1)[-1]}"
        result = run_cli(env_for(tmp_path, as_role), "validate")
        assert result.returncode == 1
        assert f'ALTER ROLE "{role}" REPLICATION' in result.stdout
        assert "Traceback" not in result.stdout + result.stderr
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")  # type: ignore[arg-type]
