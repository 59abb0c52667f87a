"""Dagster supervision of continuous synced tables and lakehouse syncs: one long-running
follower run each.

A job per table (or lakehouse sync: `lakehouse_follower`) runs the core follower until the run is
terminated; a sensor starts it when no run of it is in flight and restarts it after it ends,
backing off when it keeps failing.
"""

import time
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import dagster as dg

from reverse_etl_assets.orchestration import events
from reverse_etl_assets.orchestration import metadata as md
from reverse_etl_assets.orchestration.lakehouse_follower import lakehouse_follower_job
from reverse_etl_assets.orchestration.lakehouse_translator import LakehouseSyncTranslator
from reverse_etl_assets.orchestration.resources import PostgresTarget
from reverse_etl_assets.orchestration.translator import SyncedTableTranslator
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.pipelines.delta_to_postgres.follow import follow_table
from reverse_etl_assets.pipelines.delta_to_postgres.result import SyncResult
from reverse_etl_assets.spec import LakehouseSync, SyncedTable

SENSOR_NAME = "continuous_followers"
SENSOR_INTERVAL_SECONDS = 30
FOLLOWER_TAG = md.FOLLOWER
# Runs looked at to count consecutive failures; restarts back off from the third in a row.
RECENT_RUNS = 8
BACKOFF_AFTER_FAILURES = 3
MAX_RESTART_DELAY_SECONDS = 600.0
# A follower applies batches every second; one materialization event per this many seconds.
REPORT_EVERY_SECONDS = 30.0


class FollowConfig(dg.Config):
    """Run config of a follower run."""

    max_seconds: float | None = None
    """Stop (successfully) after this many seconds; unset: follow until the run is terminated."""


def follower_job_name(table: SyncedTable) -> str:
    """`follow__<name with dots as __>`."""
    return "follow__" + table.name.replace(".", "__")


def follower_job(table: SyncedTable, spec: dg.AssetSpec | None = None) -> dg.JobDefinition:
    """A job whose single op follows `table` (the code `reverse-etl follow` runs), reporting
    materializations of its asset `spec` (default: the default translator's)."""
    spec = spec or SyncedTableTranslator().get_asset_spec(table)
    key = spec.key
    [source_key] = [dep.asset_key for dep in spec.deps]

    @dg.op(name=f"{follower_job_name(table)}__op", description=f"Follow {table.name}.")
    def _follow(
        context: dg.OpExecutionContext, config: FollowConfig, postgres: PostgresTarget
    ) -> None:
        reported = [float("-inf")]

        def on_sync(result: SyncResult) -> None:
            context.log.info(
                f"{table.name}: version {result.version} via {result.path}, "
                f"{result.changes:,} changed keys in {result.seconds:.2f}s"
            )
            if time.monotonic() - reported[0] >= REPORT_EVERY_SECONDS:
                reported[0] = time.monotonic()
                context.log_event(
                    dg.AssetMaterialization(
                        asset_key=key,
                        metadata=_facts(result),
                        tags=events.outside_run_tags(source_key, result.version),
                    )
                )

        # Terminating the run interrupts this call: the batch in flight rolls back.
        summary = follow_table(
            table, postgres.get_dsn(), max_seconds=config.max_seconds, on_sync=on_sync
        )
        context.log.info(
            f"{table.name}: stopped at version {summary.version} after {summary.versions} "
            f"version(s) in {summary.batches} batch(es), {summary.reconnects} reconnect(s)"
        )

    @dg.job(
        name=follower_job_name(table),
        description=f"Follows the Delta source of {table.name} and applies each new version.",
        tags={FOLLOWER_TAG: table.name},
        executor_def=dg.in_process_executor,
    )
    def _job() -> None:
        _follow()

    return _job


def restart_delay(consecutive_failures: int) -> float:
    """Seconds to wait after the last failed run before starting another: none for the first
    failures, then doubling from one sensor interval up to ten minutes."""
    if consecutive_failures < BACKOFF_AFTER_FAILURES:
        return 0.0
    doublings = min(consecutive_failures - BACKOFF_AFTER_FAILURES, 10)
    return float(min(SENSOR_INTERVAL_SECONDS * 2**doublings, MAX_RESTART_DELAY_SECONDS))


def next_start(name: str, recent: Sequence[dg.RunRecord], *, now: float) -> tuple[str | None, str]:
    """The run key of a new follower run for `name`, or None, and why; `recent` newest first."""
    if not recent:
        return f"{name}:first", "no follower run yet"
    last = recent[0].dagster_run
    if not last.is_finished:
        return None, f"run {last.run_id} is {last.status.value}"
    failures = 0
    for record in recent:
        if record.dagster_run.status != dg.DagsterRunStatus.FAILURE:
            break
        failures += 1
    wait = restart_delay(failures) - (now - _ended_at(recent[0]))
    if wait > 0:
        return None, f"{failures} failed runs in a row; restarting in {wait:.0f}s"
    return f"{name}:after:{last.run_id}", f"run {last.run_id} ended {last.status.value}"


def follower_sensor(
    tables: Sequence[SyncedTable],
    translator: SyncedTableTranslator | None = None,
    *,
    lakehouse_syncs: Sequence[LakehouseSync] = (),
    lakehouse_translator: LakehouseSyncTranslator | None = None,
) -> dg.SensorDefinition:
    """Keeps one follower run per continuous table and lakehouse sync in flight, never two."""
    translator = translator or SyncedTableTranslator()
    # Names are unique among synced tables and lakehouse syncs (the spec checks it).
    jobs = {t.name: follower_job(t, translator.get_asset_spec(t)) for t in tables}
    jobs.update({s.name: lakehouse_follower_job(s, lakehouse_translator) for s in lakehouse_syncs})

    @dg.sensor(
        name=SENSOR_NAME,
        jobs=list(jobs.values()),
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Starts the follower run of each continuous synced table and lakehouse sync "
        "when none is in flight, and restarts it after it ends (backing off when it keeps "
        "failing).",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        requests: list[dg.RunRequest] = []
        reasons = []
        for name, job in jobs.items():
            recent = context.instance.get_run_records(
                dg.RunsFilter(job_name=job.name), limit=RECENT_RUNS
            )
            run_key, reason = next_start(name, recent, now=time.time())
            reasons.append(f"{name}: {reason}")
            if run_key is not None:
                context.log.info(f"starting the follower of {name} ({reason})")
                requests.append(
                    dg.RunRequest(run_key=run_key, job_name=job.name, tags={FOLLOWER_TAG: name})
                )
        if requests:
            return dg.SensorResult(run_requests=requests)
        return dg.SensorResult(skip_reason="; ".join(reasons))

    return _sensor


def _ended_at(record: dg.RunRecord) -> float:
    """When a finished run ended (its last update, for a run that never started)."""
    if record.end_time is not None:
        return record.end_time
    updated = record.update_timestamp
    return (updated if updated.tzinfo else updated.replace(tzinfo=UTC)).timestamp()


def _facts(result: SyncResult) -> dict[str, Any]:
    facts = {
        md.DETAILED_STATE: states.ONLINE_CONTINUOUS_UPDATE,
        md.DELTA_VERSION: result.version,
        md.ROW_COUNT: result.rows,
        md.MODE: result.mode,
        md.SYNC_PATH: result.path,
        md.CHANGES: result.changes,
        md.DURATION_SECONDS: round(result.seconds, 3),
    }
    if result.reason:
        facts[md.REASON] = result.reason
    return facts
