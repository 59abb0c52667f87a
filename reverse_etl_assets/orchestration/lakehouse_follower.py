"""The follower job of a continuous lakehouse sync: streams the slot into Delta until the run is
terminated (the code `reverse-etl follow NAME` runs), reporting materializations of its history
and mirror tables at a bounded rate. The `continuous_followers` sensor keeps it running.
"""

import time

import dagster as dg

from reverse_etl_assets.errors import ReverseEtlError, translate
from reverse_etl_assets.orchestration import metadata as md
from reverse_etl_assets.orchestration.failures import failure_of
from reverse_etl_assets.orchestration.lakehouse_events import materialization
from reverse_etl_assets.orchestration.lakehouse_resource import (
    LakehouseSyncResource,
    lakehouse_sync,
)
from reverse_etl_assets.orchestration.lakehouse_translator import (
    LakehouseSyncTranslator,
    lakehouse_tables,
)
from reverse_etl_assets.pipelines.postgres_to_delta.follow import follow_lakehouse
from reverse_etl_assets.pipelines.postgres_to_delta.run import LakehouseResult, combine_results
from reverse_etl_assets.spec import LakehouseSync

# The follower commits about every second; one materialization per table per this many seconds.
REPORT_EVERY_SECONDS = 30.0


class LakehouseFollowConfig(dg.Config):
    """Run config of a lakehouse follower run."""

    max_seconds: float | None = None
    """Stop (successfully) after this many seconds; unset: follow until the run is terminated."""


def lakehouse_follower_job_name(sync: LakehouseSync) -> str:
    """`follow_lakehouse__<name>`."""
    return f"follow_lakehouse__{sync.name}"


def lakehouse_follower_job(
    sync: LakehouseSync, translator: LakehouseSyncTranslator | None = None
) -> dg.JobDefinition:
    """A job whose single op follows `sync`, reporting materializations of its Delta tables
    under the keys `translator` gives them."""
    translator = translator or LakehouseSyncTranslator()
    tables = {translator.get_asset_spec(t).key: t for t in lakehouse_tables(sync)}
    name = lakehouse_follower_job_name(sync)

    @dg.op(name=f"{name}__op", description=f"Follow lakehouse sync {sync.name}.")
    def _follow(
        context: dg.OpExecutionContext,
        config: LakehouseFollowConfig,
        lakehouse: LakehouseSyncResource,
    ) -> None:
        pending: list[LakehouseResult] = []
        reported = [float("-inf")]

        def report() -> None:
            if not pending:
                return
            reported[0] = time.monotonic()
            try:
                landed = lakehouse.materializations(sync, combine_results(pending), tables)
            except Exception as exc:  # the data is safe in Delta; the next report covers it
                context.log.warning(f"{sync.name}: could not report materializations: {exc}")
                return
            pending.clear()
            for each in landed:
                context.log_event(materialization(each))

        def on_flush(result: LakehouseResult) -> None:
            context.log.info(result.describe())
            pending.append(result)
            if time.monotonic() - reported[0] >= REPORT_EVERY_SECONDS:
                report()

        # Terminating the run interrupts this call; the follower lands the whole transactions it
        # received and stops, and what it had not landed comes again on the next start.
        try:
            summary = follow_lakehouse(
                sync, lakehouse.get_dsn(), max_seconds=config.max_seconds, on_flush=on_flush
            )
        except ReverseEtlError as exc:
            raise _failure(sync, exc) from exc
        except Exception as exc:
            failure = translate(exc)
            if failure is None:
                raise
            raise _failure(sync, failure) from exc
        finally:
            report()  # what landed since the last report, however the follower stopped
        context.log.info(
            f"{sync.name}: stopped after {summary.changes:,} change(s) in {summary.flushes} "
            f"commit(s), {summary.reconnects} reconnect(s)"
        )

    @dg.job(
        name=name,
        description=f"Streams lakehouse sync {sync.name} from Postgres into Delta.",
        tags={md.FOLLOWER: sync.name},
        executor_def=dg.in_process_executor,
    )
    def _job() -> None:
        _follow()

    return _job


def _failure(sync: LakehouseSync, failure: ReverseEtlError) -> Exception:
    """Terminal: a `Failure` that says what to do; transient: the error (the sensor restarts)."""
    return failure_of(lakehouse_sync(sync), failure) if failure.terminal else failure
