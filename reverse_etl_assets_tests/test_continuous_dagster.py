"""Dagster supervision of continuous tables: a follower job per table and the sensor that keeps
exactly one run of it in flight, run against a real instance, Postgres and Delta."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from reverse_etl_assets.definitions import build_definitions
from reverse_etl_assets.orchestration.continuous import (
    FOLLOWER_TAG,
    SENSOR_NAME,
    follower_job_name,
    restart_delay,
)
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.pipelines.delta_to_postgres.status import table_status
from reverse_etl_assets.postgres.state import read_state
from reverse_etl_assets.settings import ENV_PG_DSN
from reverse_etl_assets.spec import Spec
from reverse_etl_assets_tests.helpers import launch_run, spec_of, write_delta

NAME = "lb.gold.followed"
JOB = "follow__lb__gold__followed"
OP_CONFIG_KEY = f"{JOB}__op"


def items(ids: range) -> pa.Table:
    return pa.table({"id": pa.array(list(ids), pa.int64()), "v": [f"v{i}" for i in ids]})


def make_spec(tmp_path: Path, src: Path) -> Spec:
    return spec_of(
        tmp_path,
        {"name": NAME, "source": str(src), "primary_key": ["id"], "mode": "continuous",
         "poll_interval_seconds": 0.2},
        {"name": "lb.gold.triggered", "source": str(src), "primary_key": ["id"],
         "mode": "triggered"},
    )  # fmt: skip


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_restart_delay_backs_off_only_when_failures_repeat() -> None:
    assert [restart_delay(n) for n in range(8)] == [0, 0, 0, 30, 60, 120, 240, 480]
    assert restart_delay(50) == 600


def test_each_continuous_table_gets_one_follower_job(tmp_path: Path) -> None:
    defs = build_definitions(make_spec(tmp_path, tmp_path / "src"))
    job = defs.resolve_job_def(JOB)
    assert job.tags[FOLLOWER_TAG] == NAME
    assert follower_job_name(make_spec(tmp_path, tmp_path / "src").table(NAME)) == JOB
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert [j.name for j in sensor.jobs] == [JOB]  # the triggered table has none


def test_sensor_backs_off_when_the_follower_keeps_failing(tmp_path: Path) -> None:
    defs = build_definitions(make_spec(tmp_path, tmp_path / "src"))
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    job = defs.resolve_job_def(JOB)
    with dg.instance_for_test() as instance:

        def fail_once() -> Any:
            return instance.create_run_for_job(
                job_def=job, status=dg.DagsterRunStatus.FAILURE, tags={FOLLOWER_TAG: NAME}
            )

        def tick() -> Any:
            context = dg.build_sensor_context(instance=instance, definitions=defs)
            return sensor.evaluate_tick(context)

        fail_once()
        second = fail_once()
        assert [r.run_key for r in tick().run_requests] == [f"{NAME}:after:{second.run_id}"]
        fail_once()
        waiting = tick()
        assert waiting.run_requests == []
        assert re.search(r"3 failed runs in a row; restarting in (29|30)s", waiting.skip_message)


@pytest.mark.slow
def test_sensor_starts_one_follower_and_restarts_it_after_it_dies(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_PG_DSN, pg_dsn)
    src = tmp_path / "src"
    write_delta(src, items(range(10)))
    spec = make_spec(tmp_path, src)
    defs = build_definitions(spec)
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    job = defs.resolve_job_def(JOB)

    with dg.instance_for_test() as instance:

        def tick() -> Any:  # SensorExecutionData: run_requests, skip_message
            context = dg.build_sensor_context(instance=instance, definitions=defs)
            result = sensor.evaluate_tick(context)
            return result

        def launch(request: dg.RunRequest, **config: Any) -> tuple[threading.Thread, list[Any]]:
            return launch_run(job, instance, request, op=OP_CONFIG_KEY, **config)

        def runs() -> list[dg.DagsterRun]:
            return list(instance.get_runs(dg.RunsFilter(job_name=JOB)))

        first = tick()
        assert [r.run_key for r in first.run_requests] == [f"{NAME}:first"]
        request = first.run_requests[0]
        assert request.job_name == JOB and request.tags[FOLLOWER_TAG] == NAME

        thread, outcome = launch(request, max_seconds=8)
        wait_until(lambda: bool(runs()) and runs()[0].status == dg.DagsterRunStatus.STARTED,
                   timeout=30, what="the run to start")  # fmt: skip
        wait_until(lambda: _checkpoint(pg_dsn) == 0, timeout=30, what="the initial snapshot")
        write_delta(src, items(range(10, 15)))
        wait_until(lambda: _checkpoint(pg_dsn) == 1, timeout=30, what="version 1")
        running = tick()
        assert running.run_requests == [] and "is STARTED" in str(running.skip_message)
        with psycopg.connect(pg_dsn) as conn:
            stored = read_state(conn, NAME)
        following = table_status(spec.table(NAME), stored)
        assert following.detailed_state == states.ONLINE_CONTINUOUS_UPDATE
        thread.join(timeout=60)
        assert outcome[0].success
        first_run = runs()[0]

        # It ended (here: its max_seconds; a crash or a terminated run alike): started again.
        ended = tick()
        assert [r.run_key for r in ended.run_requests] == [f"{NAME}:after:{first_run.run_id}"]

        # A run created but not launched yet counts as in flight too: never two.
        pending = instance.create_run_for_job(
            job_def=job, status=dg.DagsterRunStatus.NOT_STARTED, tags={FOLLOWER_TAG: NAME}
        )
        assert tick().run_requests == []
        instance.report_run_canceled(pending)

        # A follower that dies (a column dropped: terminal) is restarted by the next tick.
        restarted = tick()
        assert [r.run_key for r in restarted.run_requests] == [f"{NAME}:after:{pending.run_id}"]
        write_deltalake(
            str(src),
            pa.table({"id": pa.array(range(3), pa.int64())}),
            mode="overwrite",
            schema_mode="overwrite",
        )
        thread, outcome = launch(restarted.run_requests[0])
        thread.join(timeout=60)
        assert not outcome[0].success
        died = runs()[0]
        assert died.status == dg.DagsterRunStatus.FAILURE
        again = tick()
        assert [r.run_key for r in again.run_requests] == [f"{NAME}:after:{died.run_id}"]


def _checkpoint(dsn: str) -> int | None:
    with psycopg.connect(dsn) as conn:
        found = conn.execute("SELECT to_regclass('reverse_etl.synced_tables')").fetchone()
        if found is None or found[0] is None:
            return None
        stored = read_state(conn, NAME)
    return stored.last_synced_version if stored is not None else None
