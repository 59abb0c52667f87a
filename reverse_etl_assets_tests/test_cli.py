"""The `reverse-etl` command line, run as a real subprocess against real Postgres and Delta.

Also the crash test: `kill -9` in the middle of a snapshot load leaves the previous table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
import yaml

from reverse_etl_assets_tests.helpers import fetch, rows_of, run_cli, write_delta

NAME = "lakebase.gold.items_synced"


def make_env(tmp_path: Path, pg_dsn: str, tables: list[dict[str, object]]) -> dict[str, str]:
    spec = tmp_path / "synced_tables.yaml"
    spec.write_text(yaml.safe_dump({"lake_root": str(tmp_path / "lake"), "synced_tables": tables}))
    return {**os.environ, "REVERSE_ETL_SPEC": str(spec), "REVERSE_ETL_PG_DSN": pg_dsn}


def test_validate_sync_status(tmp_path: Path, pg_dsn: str) -> None:
    write_delta(
        tmp_path / "lake/analytics/gold/items", pa.table({"id": pa.array([1, 2], pa.int64())})
    )
    env = make_env(
        tmp_path,
        pg_dsn,
        [{"name": NAME, "source": "analytics.gold.items", "primary_key": ["id"]}],
    )
    validate = run_cli(env, "validate")
    assert validate.returncode == 0, validate.stderr
    assert f"ok   {NAME}" in validate.stdout

    before = json.loads(run_cli(env, "status", "--json").stdout)
    assert before[0]["detailed_state"] == "SYNCED_TABLE_OFFLINE"
    assert before[0]["last_synced_version"] is None

    synced = run_cli(env, "sync", NAME)
    assert synced.returncode == 0, synced.stderr
    assert "version 0, 2 rows" in synced.stdout

    status = json.loads(run_cli(env, "status", NAME, "--json").stdout)
    assert set(status[0]) == {
        "kind", "name", "mode", "detailed_state", "message", "source", "source_version",
        "last_synced_version", "last_sync_time", "rows", "lag_versions", "lag_seconds",
        "skipped_null_keys",
    }  # fmt: skip
    assert status[0]["kind"] == "synced_table"
    assert status[0]["detailed_state"] == "SYNCED_TABLE_ONLINE_NO_PENDING_UPDATE"
    assert (status[0]["rows"], status[0]["lag_versions"], status[0]["source_version"]) == (2, 0, 0)

    write_delta(tmp_path / "lake/analytics/gold/items", pa.table({"id": pa.array([3], pa.int64())}))
    lagging = json.loads(run_cli(env, "status", "--json").stdout)[0]
    assert lagging["lag_versions"] == 1 and lagging["lag_seconds"] is not None
    assert lagging["detailed_state"] != "SYNCED_TABLE_ONLINE_NO_PENDING_UPDATE"

    table = run_cli(env, "status")
    assert "detailed_state" in table.stdout and NAME in table.stdout


def test_validate_reports_every_bad_table(tmp_path: Path, pg_dsn: str) -> None:
    write_delta(tmp_path / "lake/a/b/c", pa.table({"id": pa.array([1], pa.int64())}), cdf=False)
    env = make_env(
        tmp_path,
        pg_dsn,
        [
            {"name": "x.y.bad_key", "source": "a.b.c", "primary_key": ["nope"]},
            {"name": "x.y.no_cdf", "source": "a.b.c", "primary_key": ["id"], "mode": "triggered"},
            {"name": "x.y.missing", "source": "a.b.missing", "primary_key": ["id"]},
        ],
    )
    result = run_cli(env, "validate")
    assert result.returncode == 1
    assert "FAIL x.y.bad_key" in result.stdout and "['nope']" in result.stdout
    assert "FAIL x.y.no_cdf" in result.stdout and "enable-cdf a.b.c" in result.stdout
    assert "FAIL x.y.missing" in result.stdout
    assert fetch(pg_dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'y'") == [(0,)]


def test_bad_spec_is_one_clear_error(tmp_path: Path, pg_dsn: str) -> None:
    env = make_env(tmp_path, pg_dsn, [{"name": "x.y.z", "source": "a.b.c"}])
    result = run_cli(env, "sync", "x.y.z")
    assert result.returncode == 1
    assert "error: synced table 'x.y.z': `primary_key` is required" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_kill_9_mid_load_leaves_previous_table(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "lake/analytics/gold/items"
    write_delta(src, pa.table({"id": pa.array([1, 2, 3], pa.int64()), "v": ["a", "b", "c"]}))
    env = make_env(
        tmp_path, pg_dsn, [{"name": NAME, "source": "analytics.gold.items", "primary_key": ["id"]}]
    )
    assert run_cli(env, "sync", NAME).returncode == 0
    big = 3_000_000
    ids = pa.array(range(big), pa.int64())
    write_delta(src, pa.table({"id": ids, "v": pa.array(["x" * 40] * big)}), mode="overwrite")

    proc = subprocess.Popen(
        [sys.executable, "-m", "reverse_etl_assets.cli", "sync", NAME],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            copied = fetch(
                pg_dsn, "SELECT coalesce(sum(tuples_processed), 0) FROM pg_stat_progress_copy"
            )
            if copied[0][0] > 0:
                break
            assert proc.poll() is None, "the sync finished before it could be interrupted"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert rows_of(pg_dsn, "gold", "items_synced", "id") == [(1, "a"), (2, "b"), (3, "c")]
    with psycopg.connect(pg_dsn) as conn:
        stored = conn.execute(
            "SELECT last_synced_version FROM reverse_etl.synced_tables WHERE name = %s", (NAME,)
        ).fetchone()
    assert stored == (0,)

    again = run_cli(env, "sync", NAME)
    assert again.returncode == 0, again.stderr
    assert fetch(pg_dsn, "SELECT count(*), count(DISTINCT id) FROM gold.items_synced") == [
        (big, big)
    ]
    assert fetch(pg_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'gold'") == [
        ("items_synced",)
    ]
