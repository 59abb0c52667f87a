"""A sync as a plan and its landing: planning writes nothing and reads no data; landing writes the
plan with its checkpoint, and refuses (transiently) when the checkpoint moved since the plan."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from deltalake import DeltaTable

from reverse_etl_assets.errors import CheckpointMoved, SpecError
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.pipelines.delta_to_postgres.plan import plan_sync
from reverse_etl_assets.pipelines.delta_to_postgres.run import land_sync, sync_table
from reverse_etl_assets.postgres.state import TableState, read_state
from reverse_etl_assets_tests.helpers import (
    delta_rows,
    fetch,
    items,
    one_table,
    postgres_rows,
    write_delta,
)

NAME = "lakebase.gold.items_synced"


def stored(dsn: str) -> TableState | None:
    with psycopg.connect(dsn) as conn:
        return read_state(conn, NAME)


def test_a_plan_writes_nothing_and_lands_later(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(10)))
    table = one_table(tmp_path, source=str(src), primary_key=["id"], mode="triggered")
    plan = plan_sync(table, pg_dsn)
    assert (plan.path, plan.version, plan.start) == ("snapshot", 0, None)
    assert stored(pg_dsn) is None
    assert fetch(pg_dsn, "SELECT to_regclass('gold.items_synced')") == [(None,)]
    assert land_sync(plan, pg_dsn).path == "snapshot"
    assert postgres_rows(pg_dsn) == delta_rows(src)

    DeltaTable(str(src)).update(updates={"v": "'x'"}, predicate="id = 3")
    plan = plan_sync(table, pg_dsn)
    assert (plan.path, plan.version) == ("incremental", 1)
    assert plan.start is not None and plan.start.version == 0
    assert postgres_rows(pg_dsn) == delta_rows(src, version=0)  # planned, not landed
    result = land_sync(plan, pg_dsn)
    assert (result.path, result.version) == ("incremental", 1)
    assert postgres_rows(pg_dsn) == delta_rows(src)
    assert plan_sync(table, pg_dsn).path == "none"


def test_a_plan_whose_checkpoint_moved_is_refused(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(10)))
    table = one_table(tmp_path, source=str(src), primary_key=["id"], mode="triggered")
    sync_table(table, pg_dsn)
    DeltaTable(str(src)).update(updates={"v": "'x'"}, predicate="id = 3")
    stale = plan_sync(table, pg_dsn)
    assert sync_table(table, pg_dsn).version == 1  # another sync lands first
    DeltaTable(str(src)).update(updates={"v": "'y'"}, predicate="id = 4")
    with pytest.raises(CheckpointMoved, match="plan it again") as info:
        land_sync(stale, pg_dsn)
    assert not info.value.terminal
    after = stored(pg_dsn)
    assert after is not None and after.last_synced_version == 1
    assert after.state == states.ONLINE_NO_PENDING_UPDATE  # not recorded as a failure
    assert land_sync(plan_sync(table, pg_dsn), pg_dsn).version == 2
    assert postgres_rows(pg_dsn) == delta_rows(src)


def test_a_failed_plan_is_recorded(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(3)), cdf=False)
    table = one_table(tmp_path, source=str(src), primary_key=["id"], mode="triggered")
    with pytest.raises(SpecError, match="enable-cdf"):
        plan_sync(table, pg_dsn)
    failed = stored(pg_dsn)
    assert failed is not None and failed.state == states.OFFLINE_FAILED
    assert "enable-cdf" in failed.message
