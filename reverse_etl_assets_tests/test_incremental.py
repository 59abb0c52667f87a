"""Triggered syncs against real Postgres and Delta: exact increments, every impossible increment
detected and replaced by a full refresh, schema changes, locking and kill -9 mid-apply."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake

from reverse_etl_assets.errors import DataError
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.pipelines.delta_to_postgres.incremental import SchemaChangeError
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.spec import SyncedTable
from reverse_etl_assets_tests.helpers import (
    delta_rows,
    fetch,
    items,
    one_table,
    postgres_rows,
    stored_state,
    write_delta,
)

NAME = "lakebase.gold.items_synced"


def triggered(tmp_path: Path, src: Path, **extra: object) -> SyncedTable:
    return one_table(tmp_path, source=str(src), primary_key=["id"], mode="triggered", **extra)


def test_versions_apply_incrementally_and_exactly(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(100)))
    table = triggered(tmp_path, src)
    assert sync_table(table, pg_dsn).path == "snapshot"
    dt = DeltaTable(str(src))
    dt.update(updates={"v": "'updated'"}, predicate="id < 3")
    DeltaTable(str(src)).delete("id >= 95")
    write_delta(src, items([500, 501], "new"))
    result = sync_table(table, pg_dsn)
    assert (result.path, result.version, result.changes) == ("incremental", 3, 10)
    assert postgres_rows(pg_dsn) == delta_rows(src)
    assert stored_state(pg_dsn).rows == 97 and stored_state(pg_dsn).last_synced_version == 3

    again = sync_table(table, pg_dsn)
    assert (again.path, again.version) == ("none", 3)
    assert stored_state(pg_dsn).state == states.ONLINE_NO_PENDING_UPDATE


def test_delete_then_reinsert_and_overwrite_of_the_same_keys(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(50)))
    table = triggered(tmp_path, src, full_refresh_threshold=1.0)
    sync_table(table, pg_dsn)
    DeltaTable(str(src)).delete("id = 1")
    write_delta(src, items([1], "back"))
    # An overwrite of the same keys: delta-rs returns its inserts before its deletes.
    write_delta(src, items(range(50), "over"), mode="overwrite")
    result = sync_table(table, pg_dsn)
    assert result.path == "incremental"
    assert postgres_rows(pg_dsn) == delta_rows(src)


def test_compaction_advances_the_checkpoint_without_writes(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    for chunk in range(3):
        write_delta(src, items(range(chunk * 10, chunk * 10 + 10)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    writes = (
        "SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables "
        "WHERE relname = 'items_synced'"
    )
    before = fetch(pg_dsn, writes)
    DeltaTable(str(src)).optimize.compact()
    result = sync_table(table, pg_dsn)
    assert (result.path, result.changes, result.version) == ("incremental", 0, 3)
    assert stored_state(pg_dsn).last_synced_version == 3
    assert fetch(pg_dsn, writes) == before


def test_recreated_source_is_fully_refreshed(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(10)))
    write_delta(src, items(range(10, 20)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    import shutil

    shutil.rmtree(src)
    write_delta(src, items(range(3), "fresh"))
    result = sync_table(table, pg_dsn)
    assert result.path == "snapshot" and "recreated" in result.reason
    assert postgres_rows(pg_dsn) == delta_rows(src)
    assert "recreated" in stored_state(pg_dsn).message


def test_vacuumed_range_falls_back_to_a_snapshot(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(100)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    # An append's changes are read from its data file; compaction removes that file from the
    # table and vacuum deletes it, so the range can no longer be read.
    write_delta(src, items([100]))
    write_delta(src, items([101]))
    DeltaTable(str(src)).optimize.compact()
    DeltaTable(str(src)).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    result = sync_table(table, pg_dsn)
    assert result.path == "snapshot" and "cannot be read" in result.reason
    assert postgres_rows(pg_dsn) == delta_rows(src)


def test_expired_log_falls_back_to_a_snapshot(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(100)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    DeltaTable(str(src)).update(updates={"v": "'x'"}, predicate="id = 5")
    write_delta(src, items([1000]))
    DeltaTable(str(src)).create_checkpoint()
    (src / "_delta_log" / f"{1:020d}.json").unlink()
    result = sync_table(table, pg_dsn)
    assert result.path == "snapshot" and "no longer in the Delta log" in result.reason
    assert postgres_rows(pg_dsn) == delta_rows(src)


def test_cdf_off_for_part_of_the_range_falls_back(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(100)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    DeltaTable(str(src)).update(updates={"v": "'x'"}, predicate="id = 4")
    DeltaTable(str(src)).alter.set_table_properties({"delta.enableChangeDataFeed": "false"})
    DeltaTable(str(src)).update(updates={"v": "'x'"}, predicate="id = 5")
    DeltaTable(str(src)).alter.set_table_properties({"delta.enableChangeDataFeed": "true"})
    result = sync_table(table, pg_dsn)
    assert result.path == "snapshot" and "turned off at version 2" in result.reason
    assert postgres_rows(pg_dsn) == delta_rows(src)


def test_more_than_the_threshold_changed_swaps_a_snapshot(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(100)))
    table = triggered(tmp_path, src, full_refresh_threshold=0.05)
    sync_table(table, pg_dsn)
    DeltaTable(str(src)).update(updates={"v": "'x'"}, predicate="id < 6")
    result = sync_table(table, pg_dsn)
    assert result.path == "snapshot" and "6 changed keys > 5% of 100 rows" in result.reason
    assert postgres_rows(pg_dsn) == delta_rows(src)


def test_added_column_is_added_in_the_same_transaction(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(20)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    wider = items([20]).append_column("score", pa.array([1.5]))
    write_deltalake(str(src), wider, mode="append", schema_mode="merge")
    result = sync_table(table, pg_dsn)
    assert result.path == "incremental"
    rows = postgres_rows(pg_dsn)
    assert rows[0] == (0, "v0", None) and rows[-1] == (20, "v20", 1.5)


@pytest.mark.parametrize("change", ["drop", "retype"])
def test_non_additive_schema_change_stops_then_full_refresh_works(
    tmp_path: Path, pg_dsn: str, change: str
) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(20)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    before = postgres_rows(pg_dsn)
    if change == "drop":
        new = pa.table({"id": pa.array(range(20), pa.int64())})
    else:
        new = pa.table(
            {"id": pa.array(range(20), pa.int64()), "v": pa.array(range(20), pa.int64())}
        )
    write_deltalake(str(src), new, mode="overwrite", schema_mode="overwrite")
    with pytest.raises(SchemaChangeError, match="--full-refresh") as info:
        sync_table(table, pg_dsn)
    assert "column 'v'" in str(info.value)
    assert postgres_rows(pg_dsn) == before
    assert stored_state(pg_dsn).state == states.ONLINE_PIPELINE_FAILED
    result = sync_table(table, pg_dsn, full_refresh=True)
    assert result.path == "snapshot" and result.version == 1
    assert postgres_rows(pg_dsn) == delta_rows(src)
    assert stored_state(pg_dsn).state == states.ONLINE_NO_PENDING_UPDATE


def test_duplicate_keys_in_a_version_fail_and_change_nothing(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(100)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    write_delta(src, items([7, 7]))
    with pytest.raises(DataError, match=r"\{'id': 7\} x2 in version 1"):
        sync_table(table, pg_dsn)
    assert postgres_rows(pg_dsn) == delta_rows(src, version=0)
    assert stored_state(pg_dsn).last_synced_version == 0


@pytest.mark.parametrize(
    "second_row",
    [
        lambda src: write_delta(src, items([7], "twin")),
        lambda src: DeltaTable(str(src)).update(updates={"id": "7"}, predicate="id = 3"),
    ],
    ids=["appended", "moved-onto-it"],
)
def test_a_second_row_for_a_key_already_synced_is_a_duplicate(
    tmp_path: Path, pg_dsn: str, second_row: Callable[[Path], None]
) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(100)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    second_row(src)  # the source now holds two rows of key 7
    with pytest.raises(DataError, match=r"duplicate primary key \['id'\]"):
        sync_table(table, pg_dsn)
    assert postgres_rows(pg_dsn) == delta_rows(src, version=0)


def test_duplicate_keys_a_later_version_fixed_go_through_a_snapshot(
    tmp_path: Path, pg_dsn: str
) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(100)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    write_delta(src, items([7, 7], "dup"))  # version 1: two rows for key 7 (refused alone)
    with pytest.raises(DataError, match=r"\{'id': 7\} x2 in version 1"):
        sync_table(table, pg_dsn)
    DeltaTable(str(src)).delete("v = 'dup7'")  # version 2: the source removed them again
    result = sync_table(table, pg_dsn)
    assert result.path == "snapshot" and "duplicate keys" in result.reason
    assert postgres_rows(pg_dsn) == delta_rows(src)


def test_a_second_sync_waits_for_the_first(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(10)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    write_delta(src, items([10]))
    holder = psycopg.connect(pg_dsn, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"reverse_etl:{NAME}",))
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (sync_table(table, pg_dsn), finished.set()))
    worker.start()
    time.sleep(1.0)
    assert not finished.is_set()  # blocked behind the lock, not running alongside
    holder.close()
    worker.join(timeout=30)
    assert finished.is_set() and stored_state(pg_dsn).last_synced_version == 1


# What Postgres runs while the increment is staged (the feed streams in), then applied.
KILL_POINTS = {
    "staging": 'COPY "pg_temp"."_retl_changes"%',
    "applying": "WITH written%",
}


@pytest.mark.slow
@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_kill_9_during_an_increment_leaves_the_old_version(
    tmp_path: Path, pg_dsn: str, point: str
) -> None:
    src = tmp_path / "lake/analytics/gold/items"
    n = 1_000_000
    write_delta(src, items(range(n)))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "lake_root": str(tmp_path / "lake"),
                "synced_tables": [
                    {"name": NAME, "source": "analytics.gold.items", "primary_key": ["id"],
                     "mode": "triggered", "full_refresh_threshold": 0.5},
                ],
            }
        )
    )  # fmt: skip
    env = {**os.environ, "REVERSE_ETL_SPEC": str(spec), "REVERSE_ETL_PG_DSN": pg_dsn}
    cli = [sys.executable, "-m", "reverse_etl_assets.cli", "sync", NAME]
    assert subprocess.run(cli, env=env, capture_output=True, timeout=300).returncode == 0
    DeltaTable(str(src)).update(updates={"v": "'changed'"}, predicate="id % 5 = 0")
    proc = subprocess.Popen(cli, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            busy = fetch(
                pg_dsn,
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s",
                (KILL_POINTS[point],),
            )
            if busy[0][0]:
                break
            assert proc.poll() is None, "the increment finished before it could be interrupted"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert fetch(pg_dsn, "SELECT count(*) FROM gold.items_synced WHERE v = 'changed'") == [(0,)]
    assert fetch(pg_dsn, "SELECT last_synced_version FROM reverse_etl.synced_tables") == [(0,)]
    again = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "changed keys applied" in again.stdout
    assert fetch(
        pg_dsn, "SELECT count(*), count(*) FILTER (WHERE v = 'changed') FROM gold.items_synced"
    ) == [(n, n // 5)]


def test_a_file_lost_mid_range_fails_and_leaves_the_old_version(
    tmp_path: Path, pg_dsn: str
) -> None:
    src = tmp_path / "lake/analytics/gold/items"
    write_delta(src, items(range(100)))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "lake_root": str(tmp_path / "lake"),
                "synced_tables": [
                    {"name": NAME, "source": "analytics.gold.items", "primary_key": ["id"],
                     "mode": "triggered"},
                ],
            }
        )
    )  # fmt: skip
    env = {**os.environ, "REVERSE_ETL_SPEC": str(spec), "REVERSE_ETL_PG_DSN": pg_dsn}
    cli = [sys.executable, "-m", "reverse_etl_assets.cli", "sync", NAME]
    assert subprocess.run(cli, env=env, capture_output=True, timeout=300).returncode == 0
    before = postgres_rows(pg_dsn)
    DeltaTable(str(src)).update(updates={"v": "'changed'"}, predicate="id < 5")
    write_delta(src, items([100, 101]))
    # The last version's data file goes away (a bad vacuum, a lost object): the feed fails while
    # it streams, after the first versions are staged, and the snapshot that could replace the
    # increment cannot read the table either.
    log = (src / "_delta_log" / f"{2:020d}.json").read_text().splitlines()
    [lost] = [json.loads(line)["add"]["path"] for line in log if '"add"' in line]
    (src / lost).unlink()
    failed = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    assert "reading Delta table" in failed.stderr and NAME in failed.stderr
    assert postgres_rows(pg_dsn) == before
    state = stored_state(pg_dsn)
    assert (state.state, state.last_synced_version) == (states.ONLINE_PIPELINE_FAILED, 0)


def test_the_feed_streams_into_the_stage_while_it_is_read(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded memory by structure: the stage's COPY is already running on the server while
    later batches of the feed are still being read, so the range is never held whole."""
    from reverse_etl_assets.pipelines.delta_to_postgres import incremental

    src = tmp_path / "src"
    write_delta(src, items(range(40_000)))
    table = triggered(tmp_path, src, full_refresh_threshold=1.0)
    sync_table(table, pg_dsn)
    DeltaTable(str(src)).update(updates={"v": "'changed'"}, predicate="id % 2 = 0")
    streamed = incremental.stream_changes
    copying_while_read: list[bool] = []

    def watched(*args: object, **kwargs: object) -> object:
        for index, batch in enumerate(streamed(*args, **kwargs)):  # type: ignore[arg-type]
            if index:
                copying = fetch(
                    pg_dsn,
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s",
                    ('COPY "pg_temp"."_retl_changes"%',),
                )
                copying_while_read.append(copying[0][0] == 1)
            yield batch

    monkeypatch.setattr(incremental, "stream_changes", watched)
    result = sync_table(table, pg_dsn)
    assert (result.path, result.changes) == ("incremental", 20_000)
    assert len(copying_while_read) >= 2 and all(copying_while_read)
    assert postgres_rows(pg_dsn) == delta_rows(src)
