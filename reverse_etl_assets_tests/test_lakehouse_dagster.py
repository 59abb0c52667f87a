"""Lakehouse syncs in Dagster: keys and deps, the closed loop, materializing (in process and
through `dagster asset materialize`), metadata, checks, errors and the CLI recorded in an
instance, against a real Postgres with logical replication and real Delta tables."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from reverse_etl_assets.definitions import build_definitions
from reverse_etl_assets.orchestration.continuous import FOLLOWER_TAG, SENSOR_NAME
from reverse_etl_assets.orchestration.lakehouse_checks import (
    CONTENT_CHECK,
    RETAINED_WAL_CHECK,
    ROW_COUNT_CHECK,
)
from reverse_etl_assets.orchestration.lakehouse_resource import LakehouseSyncResource
from reverse_etl_assets.orchestration.lakehouse_translator import GROUP, POSTGRES_GROUP
from reverse_etl_assets.settings import ENV_LAKE_ROOT, ENV_PG_DSN, ENV_SPEC
from reverse_etl_assets.spec import Spec, load_spec, parse_spec
from reverse_etl_assets_tests.helpers import launch_run, postgres_resources, run_cli
from reverse_etl_assets_tests.lakehouse_helpers import delta_rows, execute, postgres_frame

ORDERS_PG = dg.AssetKey(["postgres", "app", "orders"])
SIGNUPS_PG = dg.AssetKey(["postgres", "app", "signups"])
ORDERS = dg.AssetKey(["bronze", "app", "orders"])
ORDERS_HISTORY = dg.AssetKey(["bronze", "app", "lb_orders_history"])
SIGNUPS = dg.AssetKey(["bronze", "app", "signups"])
SIGNUPS_HISTORY = dg.AssetKey(["bronze", "app", "lb_signups_history"])
LAKEHOUSE_KEYS = {ORDERS, ORDERS_HISTORY, SIGNUPS, SIGNUPS_HISTORY}
SERVED = dg.AssetKey(["lakebase", "serving", "orders_synced"])
SCHEDULE = "*/15 * * * *"
DAGSTER_CLI = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "reverse_etl_assets"]
LSN = re.compile(r"^[0-9A-F]+/[0-9A-F]+$")

SPEC = f"""
lake_root: lake
synced_tables:
  - name: lakebase.serving.orders_synced
    source: bronze.app.orders
    primary_key: [id]
    mode: triggered
lakehouse_syncs:
  - name: app
    tables: [app.signups, app.orders]
    target: bronze.app
    mode: triggered
    schedule: "{SCHEDULE}"
"""


@pytest.fixture
def spec_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The closed loop: app.orders streamed into bronze.app.orders, served back from Postgres."""
    path = tmp_path / "synced_tables.yaml"
    path.write_text(SPEC)
    monkeypatch.delenv(ENV_LAKE_ROOT, raising=False)
    return path


@pytest.fixture
def spec(spec_path: Path) -> Spec:
    return load_spec(spec_path)


@pytest.fixture
def app_tables(pg_dsn: str) -> str:
    """`app.orders` (3 rows) and `app.signups` (2 rows) in the test database; its DSN."""
    execute(
        pg_dsn,
        "CREATE SCHEMA app",
        "CREATE TABLE app.orders (id bigint PRIMARY KEY, amount numeric(10,2), note text)",
        "CREATE TABLE app.signups (id bigint PRIMARY KEY, email text)",
        "INSERT INTO app.orders VALUES (1, 10.50, 'a'), (2, 20.00, 'b'), (3, 30.25, NULL)",
        "INSERT INTO app.signups VALUES (1, 'a@example.com'), (2, 'b@example.com')",
    )
    return pg_dsn


def _assets(defs: dg.Definitions) -> list[dg.AssetsDefinition]:
    """Assets and checks (checks run with the assets they check, as the UI's Materialize)."""
    nodes = [*(defs.assets or ()), *(defs.asset_checks or ())]
    return [a for a in nodes if isinstance(a, dg.AssetsDefinition)]


def _resources(dsn: str, **lakehouse: Any) -> dict[str, Any]:
    return {**postgres_resources(dsn), "lakehouse": LakehouseSyncResource(dsn=dsn, **lakehouse)}


def _drain(
    defs: dg.Definitions, dsn: str, instance: dg.DagsterInstance, **lakehouse: Any
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        _assets(defs),
        selection=sorted(LAKEHOUSE_KEYS, key=str),
        resources=_resources(dsn, **lakehouse),
        instance=instance,
        raise_on_error=False,
    )


def _metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, Any]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    materialization = event.step_materialization_data.materialization
    return {k: v.value for k, v in materialization.metadata.items()}


def _data_version(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> str | None:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    tags = event.step_materialization_data.materialization.tags or {}
    return tags.get("dagster/data_version")


def _checks(result: dg.ExecuteInProcessResult) -> dict[tuple[dg.AssetKey, str], Any]:
    return {(e.asset_key, e.check_name): e for e in result.get_asset_check_evaluations()}


def test_definitions_declare_postgres_tables_history_mirror_and_the_closed_loop(
    spec: Spec,
) -> None:
    defs = build_definitions(spec)
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()

    assert LAKEHOUSE_KEYS | {SERVED} == graph.materializable_asset_keys
    for table, pg in ((ORDERS, ORDERS_PG), (SIGNUPS, SIGNUPS_PG)):
        history = dg.AssetKey([*table.path[:-1], f"lb_{table.path[-1]}_history"])
        assert graph.get(table).parent_keys == {pg} == graph.get(history).parent_keys
        node = graph.get(pg)
        assert node.is_external and not node.is_materializable and not node.is_observable
        assert node.group_name == POSTGRES_GROUP
    # The closed loop: Postgres table -> mirror -> synced table; the mirror is not observed.
    assert graph.get(SERVED).parent_keys == {ORDERS}
    assert graph.observable_asset_keys == set()
    assert SERVED in graph.get(ORDERS).child_keys

    [drained] = [
        a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition) and ORDERS in a.keys
    ]
    assert set(drained.keys) == LAKEHOUSE_KEYS
    assert not drained.can_subset  # one slot feeds them all
    for key in LAKEHOUSE_KEYS:
        node = graph.get(key)
        assert node.group_name == GROUP
        assert set(node.kinds) == {"postgres", "delta"}
        condition = node.automation_condition
        assert condition is not None
        assert condition.get_label() == f"drain on schedule {SCHEDULE} (UTC)"
    checks = {(k.asset_key, k.name) for k in graph.asset_check_keys}
    for mirror in (ORDERS, SIGNUPS):
        assert {(mirror, ROW_COUNT_CHECK), (mirror, CONTENT_CHECK)} <= checks
    assert {(key, RETAINED_WAL_CHECK) for key in LAKEHOUSE_KEYS} <= checks
    automation = defs.resolve_sensor_def("synced_tables_automation")
    assert isinstance(automation, dg.AutomationConditionSensorDefinition)


def test_the_schedule_requests_every_table_of_the_sync_at_the_cron_tick(spec: Spec) -> None:
    defs = build_definitions(spec)
    instance = dg.DagsterInstance.ephemeral()
    now = dt.datetime(2026, 1, 1, 12, 1, tzinfo=dt.UTC)
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=now)
    assert not {r.key for r in first.results if r.true_subset.size} & LAKEHOUSE_KEYS
    after_tick = dg.evaluate_automation_conditions(
        defs=defs,
        instance=instance,
        cursor=first.cursor,
        evaluation_time=now + dt.timedelta(minutes=15),
    )
    requested = {r.key for r in after_tick.results if r.true_subset.size}
    assets = {key for key in requested if isinstance(key, dg.AssetKey)}
    assert assets == LAKEHOUSE_KEYS  # together; the served table has no schedule
    # Their checks run in the same run, after the drain.
    assert {key.asset_key for key in requested - assets} == LAKEHOUSE_KEYS


def test_the_demo_spec_shows_the_closed_loop() -> None:
    from reverse_etl_assets.settings import DEFAULT_SPEC

    graph = build_definitions(load_spec(DEFAULT_SPEC)).resolve_asset_graph()
    assert graph.get(SERVED).parent_keys == {ORDERS}
    assert graph.get(ORDERS).parent_keys == {ORDERS_PG}
    assert graph.get(ORDERS_HISTORY).parent_keys == {ORDERS_PG}


def test_materialize_drains_once_with_metadata_data_versions_and_passing_checks(
    spec: Spec, app_tables: str
) -> None:
    defs = build_definitions(spec)
    instance = dg.DagsterInstance.ephemeral()

    first = _drain(defs, app_tables, instance)
    assert first.success
    assert {e.asset_key for e in first.get_asset_materialization_events()} == LAKEHOUSE_KEYS
    mirror = _metadata(first, ORDERS)
    assert mirror["dagster/row_count"] == 3
    assert mirror["reverse_etl/sync_path"] == "snapshot"
    assert mirror["reverse_etl/snapshot_rows"] == 3
    assert LSN.match(mirror["reverse_etl/last_lsn"])
    assert mirror["reverse_etl/retained_wal_bytes"] >= 0
    assert mirror["reverse_etl/lag_bytes"] >= 0
    assert mirror["reverse_etl/slot"] == "reverse_etl_app"
    version = DeltaTable(mirror["reverse_etl/delta_table"]).version()
    assert mirror["reverse_etl/delta_version"] == version
    assert _data_version(first, ORDERS) == str(version)
    assert _metadata(first, ORDERS_HISTORY)["reverse_etl/rows_appended"] == 3
    checks = _checks(first)
    assert {k for k, e in checks.items() if not e.passed} == set()
    assert len(checks) == 2 * 2 + len(LAKEHOUSE_KEYS)

    execute(
        app_tables,
        "INSERT INTO app.orders VALUES (4, 40, 'd'), (5, 50, 'e')",
        "UPDATE app.orders SET note = 'b2' WHERE id = 2",
        "DELETE FROM app.orders WHERE id = 1",
    )
    second = _drain(defs, app_tables, instance)
    assert second.success
    mirror = _metadata(second, ORDERS)
    changes = [mirror[f"reverse_etl/{kind}"] for kind in ("inserts", "updates", "deletes")]
    assert changes == [2, 1, 1] and mirror["reverse_etl/truncates"] == 0
    assert mirror["dagster/row_count"] == 4 and mirror["reverse_etl/sync_path"] == "stream"
    assert int(_data_version(second, ORDERS) or -1) > version
    assert _metadata(second, ORDERS_HISTORY)["reverse_etl/rows_appended"] == 4
    signups = _metadata(second, SIGNUPS)
    assert signups["reverse_etl/inserts"] == 0 and signups["dagster/row_count"] == 2
    assert (
        delta_rows(str(mirror["reverse_etl/delta_table"]))
        == postgres_frame(app_tables, "app.orders").to_dicts()
    )
    assert all(e.passed for e in _checks(second).values())


def test_a_mirror_behind_postgres_fails_its_checks_with_sample_keys(
    spec: Spec, app_tables: str
) -> None:
    defs = build_definitions(spec)
    instance = dg.DagsterInstance.ephemeral()
    assert _drain(defs, app_tables, instance).success
    # Changes not drained yet: the mirror differs, and the slot holds their WAL.
    execute(app_tables, "UPDATE app.orders SET note = 'changed' WHERE id = 3")
    execute(app_tables, "INSERT INTO app.orders VALUES (9, 90, 'new')")

    job = dg.define_asset_job("checks_only", selection=dg.AssetSelection.checks_for_assets(ORDERS))
    checked = (
        dg.Definitions(assets=_assets(defs), jobs=[job], resources=_resources(app_tables))
        .resolve_job_def("checks_only")
        .execute_in_process(instance=instance, raise_on_error=False)
    )
    checks = _checks(checked)
    count, content = checks[(ORDERS, ROW_COUNT_CHECK)], checks[(ORDERS, CONTENT_CHECK)]
    assert not count.passed and not content.passed
    assert content.severity == dg.AssetCheckSeverity.ERROR
    metadata = {k: v.value for k, v in content.metadata.items()}
    assert metadata["missing_in_mirror"] == ["id=9"]
    assert metadata["different_values"] == ["id=3"]
    assert (metadata["postgres_rows"], metadata["mirror_rows"]) == (4, 3)
    assert checks[(ORDERS, RETAINED_WAL_CHECK)].passed  # far under 1 GiB

    strict = dg.Definitions(
        assets=_assets(defs),
        jobs=[job],
        resources=_resources(app_tables, max_retained_wal_bytes=0),
    ).resolve_job_def("checks_only")
    wal = _checks(strict.execute_in_process(instance=instance, raise_on_error=False))[
        (ORDERS, RETAINED_WAL_CHECK)
    ]
    assert not wal.passed and wal.severity == dg.AssetCheckSeverity.WARN
    wal_metadata = {k: v.value for k, v in wal.metadata.items()}
    assert wal_metadata["threshold_bytes"] == 0 and wal_metadata["retained_wal_bytes"] > 0


def test_a_lost_slot_fails_with_what_to_do(spec: Spec, app_tables: str) -> None:
    defs = build_definitions(spec)
    instance = dg.DagsterInstance.ephemeral()
    assert _drain(defs, app_tables, instance).success
    execute(app_tables, "SELECT pg_drop_replication_slot('reverse_etl_app')")

    failed = _drain(defs, app_tables, instance)

    assert not failed.success
    [failure] = failed.get_step_failure_events()
    data = failure.step_failure_data
    assert data.user_failure_data is not None
    what = data.user_failure_data.metadata["reverse_etl/what_to_do"].value
    assert what == "run `reverse-etl sync app --full-refresh` to take a new snapshot"
    assert "replication slot reverse_etl_app was dropped" in str(data.error)


def _stale(defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey) -> StaleStatus:
    return get_stale_status_resolver(instance, _assets(defs)).get_status(key)


def test_the_served_mirror_is_stale_exactly_when_the_mirror_moved_on(
    spec: Spec, app_tables: str
) -> None:
    defs = build_definitions(spec)
    instance = dg.DagsterInstance.ephemeral()

    def serve() -> None:
        result = dg.materialize(
            _assets(defs),
            selection=[SERVED],
            resources=_resources(app_tables),
            instance=instance,
        )
        assert result.success
        assert result.get_asset_observation_events() == []  # the mirror is not "observed"

    assert _drain(defs, app_tables, instance).success
    serve()
    assert _stale(defs, instance, SERVED) == StaleStatus.FRESH
    assert _drain(defs, app_tables, instance).success  # nothing new: the same Delta version
    assert _stale(defs, instance, SERVED) == StaleStatus.FRESH

    execute(app_tables, "INSERT INTO app.orders VALUES (7, 70, 'g')")
    assert _drain(defs, app_tables, instance).success
    assert _stale(defs, instance, SERVED) == StaleStatus.STALE
    serve()
    assert _stale(defs, instance, SERVED) == StaleStatus.FRESH
    served = postgres_frame(app_tables, "serving.orders_synced")
    assert served.to_dicts() == postgres_frame(app_tables, "app.orders").to_dicts()


def _dagster_home(tmp_path: Path, spec_path: Path, dsn: str) -> tuple[Path, dict[str, str]]:
    """A DAGSTER_HOME, and the environment of a process run over the spec with it."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, ENV_SPEC: str(spec_path), ENV_PG_DSN: dsn, "DAGSTER_HOME": str(home)}
    env.pop(ENV_LAKE_ROOT, None)
    return home, env


@pytest.mark.slow
def test_dagster_cli_drains_a_triggered_lakehouse_sync_once(
    tmp_path: Path, spec_path: Path, app_tables: str
) -> None:
    home, env = _dagster_home(tmp_path, spec_path, app_tables)

    run = subprocess.run(
        [*DAGSTER_CLI, "--select", "key:bronze/app/*"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    lake = tmp_path / "lake" / "bronze" / "app"
    assert delta_rows(str(lake / "orders")) == postgres_frame(app_tables, "app.orders").to_dicts()
    assert len(delta_rows(str(lake / "lb_signups_history"))) == 2
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for key in LAKEHOUSE_KEYS:
            assert instance.get_latest_materialization_event(key) is not None, key
        assert instance.get_latest_materialization_event(SERVED) is None  # not selected


@pytest.mark.slow
def test_a_cli_sync_is_recorded_in_the_instance_and_closes_the_loop(
    tmp_path: Path, spec_path: Path, spec: Spec, app_tables: str
) -> None:
    home, env = _dagster_home(tmp_path, spec_path, app_tables)

    drained = run_cli(env, "sync", "app")
    served = run_cli(env, "sync", "lakebase.serving.orders_synced")

    assert drained.returncode == 0 and served.returncode == 0, drained.stderr + served.stderr
    assert "WARN" not in drained.stderr + served.stderr
    defs = build_definitions(spec)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        record = instance.get_latest_materialization_event(ORDERS)
        assert record is not None and record.asset_materialization is not None
        metadata = {k: v.value for k, v in record.asset_materialization.metadata.items()}
        assert metadata["dagster/row_count"] == 3
        assert metadata["reverse_etl/sync_path"] == "snapshot"
        assert LSN.match(metadata["reverse_etl/last_lsn"])
        for key in LAKEHOUSE_KEYS:
            assert instance.get_latest_materialization_event(key) is not None, key
        assert not instance.fetch_observations(ORDERS, limit=1).records
        assert _stale(defs, instance, SERVED) == StaleStatus.FRESH

        execute(app_tables, "INSERT INTO app.orders VALUES (8, 80, 'h')")
        assert run_cli(env, "sync", "app").returncode == 0
        assert _stale(defs, instance, SERVED) == StaleStatus.STALE


def _wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _mirror_rows(tmp_path: Path) -> int:
    try:
        return len(delta_rows(str(tmp_path / "lake" / "bronze" / "app" / "orders")))
    except TableNotFoundError:
        return 0


@pytest.mark.slow
def test_sensor_starts_a_lakehouse_follower_and_restarts_it_after_it_dies(
    tmp_path: Path, app_tables: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_PG_DSN, app_tables)
    spec = parse_spec(
        {
            "lake_root": str(tmp_path / "lake"),
            "lakehouse_syncs": [
                {"name": "stream", "tables": ["app.orders"], "target": "bronze.app",
                 "mode": "continuous", "flush_interval_seconds": 0.2},
            ],
        },
        path=tmp_path / "spec.yaml",
    )  # fmt: skip
    defs = build_definitions(spec)
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    job = defs.resolve_job_def("follow_lakehouse__stream")
    assert [j.name for j in sensor.jobs] == [job.name]

    with dg.instance_for_test() as instance:

        def tick() -> Any:
            context = dg.build_sensor_context(instance=instance, definitions=defs)
            return sensor.evaluate_tick(context)

        def launch(request: dg.RunRequest, **config: Any) -> tuple[threading.Thread, list[Any]]:
            return launch_run(job, instance, request, op=f"{job.name}__op", **config)

        def runs() -> list[dg.DagsterRun]:
            return list(instance.get_runs(dg.RunsFilter(job_name=job.name)))

        first = tick()
        assert [r.run_key for r in first.run_requests] == ["stream:first"]
        assert first.run_requests[0].tags[FOLLOWER_TAG] == "stream"

        thread, outcome = launch(first.run_requests[0], max_seconds=8)
        _wait_until(
            lambda: instance.get_latest_materialization_event(ORDERS) is not None,
            timeout=60,
            what="the snapshot reported",
        )
        execute(app_tables, "INSERT INTO app.orders VALUES (4, 40, 'streamed')")
        _wait_until(lambda: _mirror_rows(tmp_path) == 4, timeout=30, what="the insert")
        running = tick()
        assert running.run_requests == [] and "is STARTED" in str(running.skip_message)
        thread.join(timeout=60)
        assert outcome[0].success
        first_run = runs()[0]
        # Reported while it ran (the snapshot at once) and when it stopped (the insert).
        reported = [
            e.event_specific_data.materialization
            for e in outcome[0].all_events
            if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION and e.asset_key == ORDERS
        ]
        assert [m.metadata["dagster/row_count"].value for m in reported] == [3, 4]
        assert reported[-1].metadata["reverse_etl/inserts"].value == 1

        # It ended (here: its max_seconds; a terminated run alike): started again.
        ended = tick()
        assert [r.run_key for r in ended.run_requests] == [f"stream:after:{first_run.run_id}"]

        # A follower that dies (its slot dropped while it was stopped: terminal) is restarted
        # by the next tick, and its failure says what to do.
        execute(app_tables, "SELECT pg_drop_replication_slot('reverse_etl_stream')")
        thread, outcome = launch(ended.run_requests[0], max_seconds=8)
        thread.join(timeout=60)
        assert not outcome[0].success
        [failure] = outcome[0].get_step_failure_events()
        assert "--full-refresh" in str(failure.step_failure_data.error)
        died = runs()[0]
        assert died.status == dg.DagsterRunStatus.FAILURE
        again = tick()
        assert [r.run_key for r in again.run_requests] == [f"stream:after:{died.run_id}"]
