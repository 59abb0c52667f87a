"""Tests of the Dagster code location built from a spec: keys, deps, automation and materializing.

Assets run in process and through `dagster asset materialize` against real Postgres and Delta.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from reverse_etl_assets.definitions import build_definitions, load_definitions
from reverse_etl_assets.orchestration.resources import PostgresTarget
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.postgres.state import read_state
from reverse_etl_assets.settings import DEFAULT_SPEC, ENV_LAKE_ROOT, ENV_PG_DSN, ENV_SPEC
from reverse_etl_assets.spec import load_spec

SYNCED = dg.AssetKey(["lakebase", "gold", "t_synced"])
SOURCE = dg.AssetKey(["analytics", "gold", "t"])
PATH_SYNCED = dg.AssetKey(["lakebase", "gold", "p_synced"])
CRON = "0 * * * *"
DAGSTER_CLI = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "reverse_etl_assets"]

FIRST = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"]})
SECOND = pa.table({"id": pa.array([4, 5], pa.int64()), "name": ["d", None]})


@pytest.fixture
def three_part_source(lake_root: Path) -> Path:
    """`analytics.gold.t` under the lake root, at version 1 (two commits, five rows)."""
    path = lake_root / "analytics" / "gold" / "t"
    write_deltalake(str(path), FIRST)
    write_deltalake(str(path), SECOND, mode="append")
    return path


@pytest.fixture
def path_source(tmp_path: Path) -> Path:
    """A Delta table named by its path (outside the lake root), at version 0."""
    path = tmp_path / "elsewhere" / "p-table"
    write_deltalake(str(path), FIRST)
    return path


@pytest.fixture
def spec(tmp_path: Path, path_source: Path) -> Path:
    """A scheduled table with a three-part source, and an unscheduled one with a path source."""
    spec = tmp_path / "synced_tables.yaml"
    spec.write_text(
        f"""
lake_root: lake
synced_tables:
  - name: lakebase.gold.t_synced
    source: analytics.gold.t
    primary_key: [id]
    schedule: "{CRON}"
  - name: lakebase.gold.p_synced
    source: {path_source}
    primary_key: [id]
"""
    )
    return spec


@pytest.fixture
def defs(
    spec: Path,
    lake_root: Path,
    three_part_source: Path,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> dg.Definitions:
    monkeypatch.setenv(ENV_SPEC, str(spec))
    monkeypatch.setenv(ENV_LAKE_ROOT, str(lake_root))
    monkeypatch.setenv(ENV_PG_DSN, pg_dsn)
    return load_definitions()


def _pg_rows(dsn: str, schema: str, table: str) -> list[tuple[object, ...]]:
    query = psycopg.sql.SQL("SELECT id, name FROM {} ORDER BY id").format(
        psycopg.sql.Identifier(schema, table)
    )
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def _delta_rows(path: Path) -> list[tuple[object, ...]]:
    data = DeltaTable(str(path)).to_pyarrow_table().sort_by("id")
    return list(zip(data["id"].to_pylist(), data["name"].to_pylist(), strict=True))


def _table_exists(dsn: str, qualified: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (qualified,)).fetchone()
    return row is not None and row[0] is not None


def _assets(defs: dg.Definitions) -> list[dg.AssetsDefinition | dg.SourceAsset]:
    return [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition | dg.SourceAsset)]


def _materialization(
    result: dg.ExecuteInProcessResult, key: dg.AssetKey
) -> dg.AssetMaterialization:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return event.step_materialization_data.materialization


def _observe(defs: dg.Definitions, key: dg.AssetKey, instance: dg.DagsterInstance) -> str | None:
    """Run the observable source asset `key` once; its reported data version."""
    [source] = [a for a in defs.assets or () if isinstance(a, dg.SourceAsset) and a.key == key]
    job = dg.define_asset_job("observe_source", selection=dg.AssetSelection.assets(key))
    result = (
        dg.Definitions(assets=[source], jobs=[job])
        .resolve_job_def("observe_source")
        .execute_in_process(instance=instance)
    )
    assert result.success
    [event] = result.get_asset_observation_events()
    observation = event.asset_observation_data.asset_observation
    assert observation.asset_key == key
    return observation.data_version


def test_definitions_load_with_keys_deps_and_automation(defs: dg.Definitions) -> None:
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()

    assert graph.materializable_asset_keys == {SYNCED, PATH_SYNCED}
    assert graph.get(SYNCED).parent_keys == {SOURCE}
    [path_key] = graph.get(PATH_SYNCED).parent_keys
    assert path_key.path[0] == "delta"
    assert re.fullmatch(r"[A-Za-z0-9_]+", path_key.path[1])
    assert path_key.path[1].endswith("elsewhere_p_table")
    assert graph.observable_asset_keys == {SOURCE, path_key}

    scheduled = graph.get(SYNCED).automation_condition
    assert scheduled is not None
    assert scheduled.get_label() == f"sync on schedule {CRON} (UTC)"
    assert graph.get(PATH_SYNCED).automation_condition is None
    sensor = defs.resolve_sensor_def("synced_table_schedules")
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.asset_selection.resolve(graph) == {SYNCED}


def test_schedule_requests_a_sync_at_the_cron_tick(defs: dg.Definitions) -> None:
    instance = dg.DagsterInstance.ephemeral()
    now = dt.datetime.now(dt.UTC)
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=now)
    after_tick = dg.evaluate_automation_conditions(
        defs=defs,
        instance=instance,
        cursor=first.cursor,
        evaluation_time=now + dt.timedelta(hours=1, minutes=1),
    )
    requested = {r.key for r in after_tick.results if r.true_subset.size}
    assert requested == {SYNCED}


def test_materialize_syncs_with_metadata_and_source_version(
    defs: dg.Definitions, pg_dsn: str, three_part_source: Path
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        _assets(defs),
        selection=[SYNCED],
        resources={"postgres": PostgresTarget(dsn=pg_dsn)},
        instance=instance,
    )

    assert result.success
    materialization = _materialization(result, SYNCED)
    metadata: dict[str, Any] = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["dagster/row_count"] == 5
    assert metadata["delta_version"] == 1
    assert metadata["mode"] == "snapshot"
    assert metadata["sync_path"] == "snapshot"
    assert metadata["rows_per_second"] > 0
    assert metadata["duration_seconds"] > 0
    assert materialization.tags is not None
    assert materialization.tags["dagster/data_version"] == "1"
    assert _pg_rows(pg_dsn, "gold", "t_synced") == _delta_rows(three_part_source)
    assert not _table_exists(pg_dsn, "gold.p_synced")  # only the selected asset ran

    assert _observe(defs, SOURCE, instance) == "1"
    write_deltalake(str(three_part_source), FIRST.slice(0, 0), mode="append")
    assert _observe(defs, SOURCE, instance) == "2"


def test_duplicate_key_fails_the_run_and_marks_the_table_offline(
    defs: dg.Definitions, pg_dsn: str, three_part_source: Path
) -> None:
    duplicate = pa.table({"id": pa.array([2], pa.int64()), "name": ["b again"]})
    write_deltalake(str(three_part_source), duplicate, mode="append")

    result = dg.materialize(
        _assets(defs),
        selection=[SYNCED],
        resources={"postgres": PostgresTarget(dsn=pg_dsn)},
        raise_on_error=False,
    )

    assert not result.success
    [failure] = result.get_step_failure_events()
    assert "duplicate primary key" in str(failure.step_failure_data.error)
    assert not _table_exists(pg_dsn, "gold.t_synced")
    with psycopg.connect(pg_dsn) as conn:
        stored = read_state(conn, "lakebase.gold.t_synced")
    assert stored is not None
    assert stored.state == states.OFFLINE_FAILED
    assert stored.last_synced_version is None
    assert "duplicate primary key" in stored.message
    assert "{'id': 2} x2" in stored.message


@pytest.mark.slow
def test_dagster_cli_materializes_one_synced_table(
    tmp_path: Path, spec: Path, three_part_source: Path, pg_dsn: str
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    env = {**os.environ, ENV_SPEC: str(spec), ENV_PG_DSN: pg_dsn, "DAGSTER_HOME": str(home)}
    env.pop(ENV_LAKE_ROOT, None)  # the spec's relative lake_root must resolve on its own

    run = subprocess.run(
        [*DAGSTER_CLI, "--select", "lakebase/gold/t_synced"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    assert _pg_rows(pg_dsn, "gold", "t_synced") == _delta_rows(three_part_source)
    assert not _table_exists(pg_dsn, "gold.p_synced")
    with psycopg.connect(pg_dsn) as conn:
        stored = read_state(conn, "lakebase.gold.t_synced")
    assert stored is not None
    assert (stored.state, stored.last_synced_version) == (states.ONLINE_NO_PENDING_UPDATE, 1)


def test_the_demo_spec_loads_as_a_code_location() -> None:
    spec = load_spec(DEFAULT_SPEC)
    defs = build_definitions(spec)
    graph = defs.resolve_asset_graph()
    for table in spec.synced_tables:
        assert graph.has(dg.AssetKey(table.asset_key_path))
    assert defs.resolve_sensor_def("synced_tables_on_source_change") is not None
