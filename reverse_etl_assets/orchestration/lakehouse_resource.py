"""Dagster resource for lakehouse syncs: drains the slot of the sync an asset step stands for
(the code `reverse-etl sync NAME` runs) and yields one `MaterializeResult` per history / mirror.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import dagster as dg

from reverse_etl_assets import settings
from reverse_etl_assets.errors import ReverseEtlError
from reverse_etl_assets.orchestration.failures import Subject, dagster_error
from reverse_etl_assets.orchestration.lakehouse_asset_decorator import lakehouse_table_of
from reverse_etl_assets.orchestration.lakehouse_events import Landed, landed_tables
from reverse_etl_assets.orchestration.lakehouse_translator import LakehouseTable
from reverse_etl_assets.pipelines.postgres_to_delta.run import (
    LakehouseResult,
    SlotLost,
    sync_lakehouse,
)
from reverse_etl_assets.pipelines.postgres_to_delta.status import read_lakehouse_status
from reverse_etl_assets.postgres.replication.problems import (
    SlotActive,
    SlotInvalidated,
    SlotMissing,
)
from reverse_etl_assets.spec import LakehouseSync

# The retained-WAL check warns above this: Postgres' default `max_wal_size` (1 GB). A slot
# holding more is a follower far behind or a sync not drained for long; the server keeps that
# WAL on its disk until it is drained (or invalidates the slot at `max_slot_wal_keep_size`).
DEFAULT_MAX_RETAINED_WAL_BYTES = 1 << 30
ENV_MAX_RETAINED_WAL_BYTES = "REVERSE_ETL_MAX_RETAINED_WAL_BYTES"


def max_retained_wal_bytes() -> int:
    """The retained-WAL threshold: REVERSE_ETL_MAX_RETAINED_WAL_BYTES, else 1 GiB."""
    raw = os.environ.get(ENV_MAX_RETAINED_WAL_BYTES, "").strip()
    if not raw:
        return DEFAULT_MAX_RETAINED_WAL_BYTES
    if not raw.isdigit():
        raise ValueError(f"{ENV_MAX_RETAINED_WAL_BYTES} must be a number of bytes, got {raw!r}")
    return int(raw)


class LakehouseSyncResource(dg.ConfigurableResource):
    """Runs lakehouse syncs (Postgres -> Delta). `dsn` is the pipeline's Postgres, which keeps
    their state and is their source unless a sync names `source_dsn_env`; empty means
    REVERSE_ETL_PG_DSN or the embedded development cluster.

    `max_retained_wal_bytes` is the threshold of the slot's asset check.
    """

    dsn: str = ""
    max_retained_wal_bytes: int = DEFAULT_MAX_RETAINED_WAL_BYTES

    def get_dsn(self) -> str:
        """The libpq URI of the pipeline's Postgres."""
        return self.dsn or settings.pg_dsn()

    def sync(
        self, context: dg.AssetExecutionContext, *, full_refresh: bool = False
    ) -> Iterator[dg.MaterializeResult]:
        """Drain the slot once; a materialization per history / mirror that holds data."""
        specs = [context.assets_def.specs_by_key[k] for k in sorted(context.selected_asset_keys)]
        tables = {spec.key: lakehouse_table_of(spec) for spec in specs}
        [sync] = {table.sync for table in tables.values()}
        try:
            result = sync_lakehouse(sync, self.get_dsn(), full_refresh=full_refresh)
        except Exception as exc:
            raise lakehouse_failure(context, sync, exc) from exc
        context.log.info(result.describe())
        for landed in self.materializations(sync, result, tables):
            yield dg.MaterializeResult(
                asset_key=landed.key,
                metadata=landed.metadata,
                data_version=dg.DataVersion(str(landed.version)),
            )
        if result.failed_tables:
            raise failed_tables_failure(sync, result)

    def materializations(
        self,
        sync: LakehouseSync,
        result: LakehouseResult,
        tables: dict[dg.AssetKey, LakehouseTable],
    ) -> list[Landed]:
        """What to record of each of `tables` that holds data after `result`."""
        return landed_tables(result, read_lakehouse_status(sync, self.get_dsn()), tables)


def lakehouse_failure(
    context: dg.AssetExecutionContext | dg.OpExecutionContext, sync: LakehouseSync, exc: Exception
) -> Exception:
    """A transient error asks for a retry; a terminal one is a `Failure` saying what to do."""
    return dagster_error(context.log, context.retry_number, lakehouse_sync(sync), exc)


def lakehouse_sync(sync: LakehouseSync) -> Subject:
    """A lakehouse sync as the subject of a failure."""
    return Subject("lakehouse sync", sync.name, "reverse_etl/lakehouse_sync", next_step(sync))


def failed_tables_failure(sync: LakehouseSync, result: LakehouseResult) -> dg.Failure:
    """The run landed the other tables; these stopped (a type change Delta cannot widen)."""
    failed = "; ".join(f"{t}: {m}" for t, m in sorted(result.failed_tables.items()))
    return dg.Failure(
        description=f"lakehouse sync {sync.name}: table(s) stopped: {failed}",
        metadata={
            "reverse_etl/lakehouse_sync": sync.name,
            "reverse_etl/failed_tables": sorted(result.failed_tables),
            "reverse_etl/what_to_do": f"fix the table, then run `reverse-etl sync {sync.name} "
            "--full-refresh` (the other tables go on meanwhile)",
        },
        allow_retries=False,
    )


def next_step(sync: LakehouseSync) -> Callable[[ReverseEtlError], str]:
    """The operator's next step after a terminal error of `sync`."""

    def step(failure: ReverseEtlError) -> str:
        if isinstance(failure, SlotActive):
            return (
                f"another process streams from slot {sync.slot} (pid {failure.pid}); stop it, or "
                "let it run: it lands the changes"
            )
        if isinstance(failure, SlotLost | SlotMissing | SlotInvalidated):
            return f"run `reverse-etl sync {sync.name} --full-refresh` to take a new snapshot"
        return (
            "fix what the description names (spec, server settings or privileges), then "
            f"materialize again; `reverse-etl status {sync.name}` shows the state, "
            "`reverse-etl validate` checks"
        )

    return step
