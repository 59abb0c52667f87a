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
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver
from deltalake import DeltaTable, write_deltalake

from reverse_etl_assets.definitions import build_definitions, load_definitions
from reverse_etl_assets.orchestration.checks import CONTENT_CHECK, ROW_COUNT_CHECK
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.postgres.state import read_state
from reverse_etl_assets.settings import DEFAULT_SPEC, ENV_LAKE_ROOT, ENV_PG_DSN, ENV_SPEC
from reverse_etl_assets.spec import load_spec
from reverse_etl_assets_tests.helpers import postgres_resources, run_cli

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


def _assets(defs: dg.Definitions) -> list[dg.AssetsDefinition]:
    return [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition)]


def _materialization(
    result: dg.ExecuteInProcessResult, key: dg.AssetKey
) -> dg.AssetMaterialization:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return event.step_materialization_data.materialization


def _observe(defs: dg.Definitions, key: dg.AssetKey, instance: dg.DagsterInstance) -> str | None:
    """Run the observable source asset `key` once; its reported data version."""
    job = dg.define_asset_job("observe_source", selection=dg.AssetSelection.assets(key))
    result = (
        dg.Definitions(assets=_assets(defs), jobs=[job], resources=postgres_resources())
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
    observed = graph.get(SOURCE).automation_condition
    assert observed is not None
    assert observed.get_label() == "observe on * * * * * (UTC)"
    sensor = defs.resolve_sensor_def("synced_tables_automation")
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


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
    assert SYNCED in requested and PATH_SYNCED not in requested
    assert SOURCE in requested  # sources are observed every minute


def test_checks_run_on_their_own_after_a_sync_recorded_from_outside_a_run(
    defs: dg.Definitions, pg_dsn: str
) -> None:
    """A sync the CLI recorded in the instance is checked without anyone clicking anything."""
    instance = dg.DagsterInstance.ephemeral()
    now = dt.datetime.now(dt.UTC)
    checks = {k for k in defs.resolve_asset_graph().asset_check_keys if k.asset_key == SYNCED}
    assert len(checks) == 2

    def requested(result: Any) -> set[Any]:
        return {r.key for r in result.results if r.true_subset.size} & checks

    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=now)
    assert requested(first) == set()  # nothing synced yet: nothing to check
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=SYNCED))
    after_sync = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=first.cursor, evaluation_time=now
    )
    assert requested(after_sync) == checks
    # The daemon's very first evaluation, after syncs it never saw happen (`make demo`).
    fresh = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=now)
    assert requested(fresh) == checks

    # A run that materializes the table runs its checks in the same run: none run again.
    nodes = [*(defs.assets or ()), *(defs.asset_checks or ())]
    result = dg.materialize(
        [n for n in nodes if isinstance(n, dg.AssetsDefinition)],
        selection=[SYNCED],
        resources=postgres_resources(pg_dsn),
        instance=instance,
    )
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {
        ROW_COUNT_CHECK: True,
        CONTENT_CHECK: True,
    }
    after_run = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=after_sync.cursor, evaluation_time=now
    )
    assert requested(after_run) == set()


def test_materialize_syncs_with_metadata_and_source_version(
    defs: dg.Definitions, pg_dsn: str, three_part_source: Path
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        _assets(defs),
        selection=[SYNCED],
        resources=postgres_resources(pg_dsn),
        instance=instance,
    )

    assert result.success
    materialization = _materialization(result, SYNCED)
    metadata: dict[str, Any] = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["dagster/row_count"] == 5
    assert metadata["dagster/table_name"] == '"gold"."t_synced"'
    assert [c.name for c in metadata["dagster/column_schema"].columns] == ["id", "name"]
    assert metadata["reverse_etl/postgres_table"] == '"gold"."t_synced"'
    assert metadata["reverse_etl/delta_version"] == 1
    assert metadata["reverse_etl/mode"] == "snapshot"
    assert metadata["reverse_etl/sync_path"] == "snapshot"
    assert metadata["reverse_etl/rows_per_second"] > 0
    assert metadata["reverse_etl/duration_seconds"] > 0
    assert metadata["reverse_etl/detailed_state"] == states.ONLINE_NO_PENDING_UPDATE
    assert "reverse_etl/reason" not in metadata  # no empty rows
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
        resources=postgres_resources(pg_dsn),
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


def _stale(defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey) -> StaleStatus:
    """Dagster's own staleness (what the UI shows), evaluated now."""
    return get_stale_status_resolver(instance, _assets(defs)).get_status(key)


def _sync(defs: dg.Definitions, instance: dg.DagsterInstance, pg_dsn: str) -> None:
    result = dg.materialize(
        _assets(defs),
        selection=[SYNCED],
        resources=postgres_resources(pg_dsn),
        instance=instance,
    )
    assert result.success


def test_fresh_after_syncing_the_latest_version_stale_once_the_source_moves(
    defs: dg.Definitions, pg_dsn: str, three_part_source: Path
) -> None:
    """The Dagster staleness of a synced table, whatever the order of observations and syncs."""
    instance = dg.DagsterInstance.ephemeral()
    _sync(defs, instance, pg_dsn)  # the source was never observed
    assert _stale(defs, instance, SYNCED) == StaleStatus.FRESH
    assert _observe(defs, SOURCE, instance) == "1"  # observing the unchanged source
    assert _stale(defs, instance, SYNCED) == StaleStatus.FRESH

    sixth = pa.table({"id": pa.array([6], pa.int64()), "name": ["f"]})
    write_deltalake(str(three_part_source), sixth, mode="append")
    assert _observe(defs, SOURCE, instance) == "2"
    assert _stale(defs, instance, SYNCED) == StaleStatus.STALE
    _sync(defs, instance, pg_dsn)
    assert _stale(defs, instance, SYNCED) == StaleStatus.FRESH

    write_deltalake(str(three_part_source), FIRST.slice(0, 0), mode="append")
    _sync(defs, instance, pg_dsn)  # synced before any observation saw version 3
    assert _stale(defs, instance, SYNCED) == StaleStatus.FRESH
    assert _observe(defs, SOURCE, instance) == "3"
    assert _stale(defs, instance, SYNCED) == StaleStatus.FRESH

    write_deltalake(str(three_part_source), FIRST.slice(0, 0), mode="append")
    assert _observe(defs, SOURCE, instance) == "4"
    assert _stale(defs, instance, SYNCED) == StaleStatus.STALE


def test_a_snapshot_of_an_unchanged_source_is_a_no_op(
    defs: dg.Definitions, pg_dsn: str, three_part_source: Path
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    _sync(defs, instance, pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        oid = conn.execute("SELECT 'gold.t_synced'::regclass::oid").fetchone()
    result = dg.materialize(
        _assets(defs),
        selection=[SYNCED],
        resources=postgres_resources(pg_dsn),
        instance=instance,
    )
    metadata = {k: v.value for k, v in _materialization(result, SYNCED).metadata.items()}
    assert metadata["reverse_etl/sync_path"] == "none"
    assert "nothing to copy" in str(metadata["reverse_etl/reason"])
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT 'gold.t_synced'::regclass::oid").fetchone() == oid  # no swap
        stored = read_state(conn, "lakebase.gold.t_synced")
    assert stored is not None and "nothing to copy" in stored.message
    assert _stale(defs, instance, SYNCED) == StaleStatus.FRESH


@pytest.mark.slow
def test_a_cli_sync_is_recorded_in_the_dagster_instance(
    tmp_path: Path, defs: dg.Definitions, spec: Path, three_part_source: Path, pg_dsn: str
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, ENV_SPEC: str(spec), ENV_PG_DSN: pg_dsn, "DAGSTER_HOME": str(home)}
    env.pop(ENV_LAKE_ROOT, None)

    run = run_cli(env, "sync", "lakebase.gold.t_synced")

    assert run.returncode == 0, run.stderr[-3000:]
    assert "WARN" not in run.stderr
    with dg.DagsterInstance.from_config(str(home)) as instance:
        record = instance.get_latest_materialization_event(SYNCED)
        assert record is not None and record.asset_materialization is not None
        metadata = {k: v.value for k, v in record.asset_materialization.metadata.items()}
        assert metadata["dagster/row_count"] == 5
        assert metadata["reverse_etl/delta_version"] == 1
        assert metadata["reverse_etl/detailed_state"] == states.ONLINE_NO_PENDING_UPDATE
        assert _stale(defs, instance, SYNCED) == StaleStatus.FRESH
        write_deltalake(str(three_part_source), FIRST.slice(0, 0), mode="append")
        assert _observe(defs, SOURCE, instance) == "2"
        assert _stale(defs, instance, SYNCED) == StaleStatus.STALE
