"""Dagster resource for the target Postgres: hands out the DSN and reads what each selected synced
table needs (its checkpoint here, its Delta source), yielding it as the asset's output, which the
Postgres IO manager lands (like `SlingResource`, but split at the asset/IO-manager line)."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator

import dagster as dg

from reverse_etl_assets import settings
from reverse_etl_assets.errors import ReverseEtlError
from reverse_etl_assets.orchestration import events
from reverse_etl_assets.orchestration.asset_decorator import synced_table_of
from reverse_etl_assets.orchestration.failures import Subject, dagster_error
from reverse_etl_assets.orchestration.pending_sync import PendingSync
from reverse_etl_assets.pipelines.delta_to_postgres.plan import plan_sync
from reverse_etl_assets.pipelines.delta_to_postgres.result import Progress
from reverse_etl_assets.runtime.progress import describe_progress
from reverse_etl_assets.spec import SyncedTable

PROGRESS_EVERY_SECONDS = 5.0


class PostgresTarget(dg.ConfigurableResource):
    """The Postgres database synced tables land in; empty `dsn` means REVERSE_ETL_PG_DSN or the
    embedded development cluster, started on first use.

    A DSN holding a password belongs in an environment variable (`dg.EnvVar(...)` or
    REVERSE_ETL_PG_DSN), not in code or run config, which Dagster shows in its UI.
    """

    dsn: str = ""

    def get_dsn(self) -> str:
        """The libpq URI to connect with."""
        return self.dsn or settings.pg_dsn()

    def read_sources(
        self, context: dg.AssetExecutionContext, *, full_refresh: bool = False
    ) -> Iterator[dg.AssetObservation | dg.Output[PendingSync]]:
        """For each selected synced table, in order: read its checkpoint and its Delta source
        (pinned at one version), choose the path, and yield what to land as the asset's output.

        Nothing is written here; the Postgres IO manager streams the snapshot or the Change Data
        Feed range into Postgres with the checkpoint, in one swap or one transaction.
        """
        specs = context.assets_def.specs_by_key
        for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
            table = synced_table_of(specs[key])
            [source_key] = [dep.asset_key for dep in specs[key].deps]
            try:
                plan = plan_sync(table, self.get_dsn(), full_refresh=full_refresh)
            except Exception as exc:
                raise dagster_error(
                    context.log, context.retry_number, synced_table(table), exc
                ) from exc
            pending = PendingSync(plan=plan, dsn=self.get_dsn())
            context.log.info(f"{table.name}: planned {pending.describe()}")
            observation = events.source_observation(context.instance, source_key, plan.version)
            if observation is not None:
                yield observation
            # `Output(data_version=...)` is marked beta in Dagster 1.13; it is the documented way
            # to give an IO-managed output its data version, so its warning is no news per run.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dg.BetaWarning)
                output = dg.Output(
                    pending,
                    output_name=context.assets_def.get_output_name_for_asset_key(key),
                    data_version=dg.DataVersion(str(plan.version)),
                    tags=events.consumed_tags(source_key, plan.version),
                )
            yield output


def progress_logger(log: logging.Logger | dg.DagsterLogManager, table: SyncedTable) -> Progress:
    """An `on_progress` callback logging how far a sync got, every PROGRESS_EVERY_SECONDS."""
    started = last_log = time.monotonic()

    def progress(done: int, total: int | None) -> None:
        nonlocal last_log
        if time.monotonic() - last_log >= PROGRESS_EVERY_SECONDS:
            last_log = time.monotonic()
            log.info(f"{table.name}: {describe_progress(done, total, last_log - started)}")

    return progress


def synced_table(table: SyncedTable) -> Subject:
    """A synced table as the subject of a failure."""

    def next_step(failure: ReverseEtlError) -> str:
        return (
            "fix what the description names (spec, source or data), then materialize again; "
            f"`reverse-etl status {table.name}` shows the state, `reverse-etl validate` checks "
            "the spec"
        )

    return Subject("synced table", table.name, "reverse_etl/synced_table", next_step)
