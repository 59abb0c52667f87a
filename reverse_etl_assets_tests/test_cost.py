"""The cheaper path from measured cost: a small range goes incremental, a large one swaps a
snapshot, the spec's `full_refresh_threshold` forces the share rule, both estimates are reported,
and the rates a table's syncs reach are kept in its state (older state tables gain the columns)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from reverse_etl_assets.delta.log import estimate_changed_rows, read_commits
from reverse_etl_assets.pipelines.delta_to_postgres import cost
from reverse_etl_assets.pipelines.delta_to_postgres.plan import plan_sync
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.postgres import state
from reverse_etl_assets.postgres.state import read_state
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
ROWS = 30_000  # large enough that a full rewrite costs more as changes than as a snapshot


def triggered(tmp_path: Path, src: Path, **extra: object) -> SyncedTable:
    return one_table(tmp_path, source=str(src), primary_key=["id"], mode="triggered", **extra)


def test_a_small_range_goes_incremental_and_says_why(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(ROWS)))
    table = triggered(tmp_path, src)
    assert table.full_refresh_threshold is None
    sync_table(table, pg_dsn)
    DeltaTable(str(src)).update(updates={"v": "'x'"}, predicate="id < 10")
    result = sync_table(table, pg_dsn)
    assert (result.path, result.changes) == ("incremental", 10)
    assert set(result.estimates) == {"snapshot", "incremental"}
    assert result.estimates["incremental"] < result.estimates["snapshot"]
    assert result.reason.startswith("incremental: ~")
    assert "for a snapshot (~10 changed rows in the Delta log, 30,000 rows)" in result.reason
    assert stored_state(pg_dsn).message == result.reason  # what the status shows
    assert postgres_rows(pg_dsn) == delta_rows(src)


def test_a_large_range_swaps_a_snapshot_and_says_why(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(ROWS)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    write_delta(src, items(range(ROWS), "over"), mode="overwrite")
    plan = plan_sync(table, pg_dsn)
    # Removed and written rows; the removed ones estimated from their files' bytes.
    assert plan.path == "snapshot" and plan.changed_rows == pytest.approx(2 * ROWS, rel=0.05)
    result = sync_table(table, pg_dsn)
    assert result.path == "snapshot"
    assert result.reason.startswith("full refresh: snapshot: ~")
    assert f"changed rows in the Delta log, {ROWS:,} rows)" in result.reason
    assert result.estimates["snapshot"] < result.estimates["incremental"]
    assert postgres_rows(pg_dsn) == delta_rows(src)


def test_the_spec_threshold_forces_the_share_rule(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(ROWS)))
    # The same full rewrite: every key changes, but not more than 100% of them.
    table = triggered(tmp_path, src, full_refresh_threshold=1.0)
    sync_table(table, pg_dsn)
    write_delta(src, items(range(ROWS), "over"), mode="overwrite")
    result = sync_table(table, pg_dsn)
    assert (result.path, result.changes) == ("incremental", ROWS)
    assert postgres_rows(pg_dsn) == delta_rows(src)
    # A small change over a low threshold: a snapshot, though an increment is cheaper.
    low = triggered(tmp_path, src, full_refresh_threshold=0.0001)
    DeltaTable(str(src)).update(updates={"v": "'x'"}, predicate="id < 10")
    result = sync_table(low, pg_dsn)
    assert result.path == "snapshot"
    assert "10 changed keys > 0% of 30,000 rows" in result.reason


def test_the_measured_rates_are_kept_and_steer_the_choice(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(ROWS)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    first = stored_state(pg_dsn)
    assert first.snapshot_rows_per_second is not None and first.snapshot_rows_per_second > 0
    assert first.incremental_changes_per_second is None  # no increment measured yet
    DeltaTable(str(src)).update(updates={"v": "'x'"}, predicate="id < 12000")
    assert sync_table(table, pg_dsn).path == "incremental"
    measured = stored_state(pg_dsn).incremental_changes_per_second
    assert measured is not None and measured > 0
    # The same range costs what this table's syncs reached: were its increments very slow, a
    # snapshot would be the cheaper path.
    fetch(
        pg_dsn,
        "UPDATE reverse_etl.synced_tables SET incremental_changes_per_second = 100 "
        "WHERE name = %s RETURNING 1",
        (NAME,),
    )
    DeltaTable(str(src)).update(updates={"v": "'y'"}, predicate="id < 1000")
    plan = plan_sync(table, pg_dsn)
    assert plan.path == "snapshot"
    assert plan.estimates["incremental"] == pytest.approx(cost.INCREMENTAL_FIXED_SECONDS + 10.0)


def test_changed_rows_are_counted_from_the_log(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(1000)))
    DeltaTable(str(src)).update(updates={"v": "'x'"}, predicate="id < 100")  # 1: 100
    DeltaTable(str(src)).delete("id >= 990")  # 2: 10
    write_delta(src, items([5000, 5001]))  # 3: 2
    source = pa.table({"id": pa.array([1, 2, 3000], pa.int64()), "v": ["m", "m", "m"]})
    DeltaTable(str(src)).merge(
        source, predicate="s.id = t.id", source_alias="s", target_alias="t"
    ).when_matched_update_all().when_not_matched_insert_all().execute()  # 4: 2 + 1
    DeltaTable(str(src)).optimize.compact()  # 5: no data change
    commits = read_commits(str(src), storage_options={}, start=1, end=5)
    assert [c.changed_rows for c in commits] == [100, 10, 2, 3, 0]
    assert estimate_changed_rows(commits, bytes_per_row=10.0) == 115


def test_an_overwrite_counts_what_it_removed_and_wrote(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(1000)))
    write_delta(src, items(range(1000), "v"), mode="overwrite")
    [commit] = read_commits(str(src), storage_options={}, start=1, end=1)
    assert commit.changed_rows == 2000


def test_without_metrics_the_files_bytes_are_counted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(1000)))
    write_delta(src, items(range(1000, 1500)))
    log = src / "_delta_log" / f"{1:020d}.json"
    log.write_text(log.read_text().replace('"operationMetrics"', '"otherMetrics"'))
    [commit] = read_commits(str(src), storage_options={}, start=1, end=1)
    assert commit.changed_rows is None and commit.changed_bytes > 0
    assert estimate_changed_rows([commit], bytes_per_row=commit.changed_bytes / 500) == 500


def test_a_rate_is_learned_only_from_a_large_enough_sync() -> None:
    assert cost.learned_rate(None, units=100, seconds=1.0, fixed=0.1) is None
    assert cost.learned_rate(50.0, units=None, seconds=1.0, fixed=0.1) == 50.0
    assert cost.learned_rate(None, units=100_000, seconds=1.1, fixed=0.1) == pytest.approx(1e5)
    blended = cost.learned_rate(50_000.0, units=100_000, seconds=1.1, fixed=0.1)
    assert blended == pytest.approx(75_000.0)


def test_an_older_state_table_gains_the_rate_columns(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA reverse_etl")
        conn.execute(
            "CREATE TABLE reverse_etl.synced_tables (name text PRIMARY KEY, source text NOT NULL, "
            "mode text NOT NULL, table_id text, last_synced_version bigint, "
            "last_sync_time timestamptz, rows bigint, skipped_null_keys bigint NOT NULL DEFAULT 0,"
            " state text NOT NULL, message text NOT NULL DEFAULT '', "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO reverse_etl.synced_tables (name, source, mode, last_synced_version, "
            "state) VALUES (%s, 's', 'triggered', 7, 'X')",
            (NAME,),
        )
        state.ensure_state_table(conn)
        state.ensure_state_table(conn)  # idempotent
        kept = read_state(conn, NAME)
    assert kept is not None and kept.last_synced_version == 7
    assert kept.snapshot_rows_per_second is None and kept.incremental_changes_per_second is None
