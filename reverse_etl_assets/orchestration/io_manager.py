"""The Postgres IO manager: what an asset returns lands in a Postgres table.

A synced-table asset returns its planned sync (`PendingSync`): the IO manager lands it, streaming
the snapshot (binary COPY, keys built after, one atomic swap) or the Change Data Feed range (one
transaction), each with its checkpoint. Any other asset returns a polars / Arrow frame or stream,
which replaces its table through the same snapshot writer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeAlias

import dagster as dg
import polars as pl
import pyarrow as pa

from reverse_etl_assets import settings
from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.orchestration import events
from reverse_etl_assets.orchestration.failures import dagster_error
from reverse_etl_assets.orchestration.pending_sync import PendingSync
from reverse_etl_assets.orchestration.resources import progress_logger, synced_table
from reverse_etl_assets.pipelines.delta_to_postgres.run import land_sync
from reverse_etl_assets.pipelines.delta_to_postgres.status import read_table_status
from reverse_etl_assets.postgres import catalog, ddl
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.table_load import TableTarget, replace_table
from reverse_etl_assets.schema.delta_to_postgres import pg_columns
from reverse_etl_assets.schema.postgres_to_polars import polars_dtypes
from reverse_etl_assets.transform.cleaning import BatchPreparer

Frame: TypeAlias = (
    pl.DataFrame | pl.LazyFrame | pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch]
)


class PostgresTableIOManager(dg.ConfigurableIOManager):
    """Stores polars DataFrames, Arrow tables or record-batch streams as Postgres tables.

    The table is the asset key's last part, in the schema named by the part before it (or
    `default_schema`). Output metadata `primary_key` (list of columns) and `indexes` (list of
    lists) are honoured; rows with a NULL key are skipped and counted.
    """

    dsn: str = ""
    default_schema: str = "public"

    def handle_output(self, context: dg.OutputContext, obj: Frame | PendingSync) -> None:
        """Land a synced table's planned sync, or replace the asset's table with `obj`."""
        if isinstance(obj, PendingSync):
            self._land(context, obj)
            return
        schema, table = self._table(context)
        meta = context.definition_metadata or {}
        raw_key = meta.get("primary_key") or ()
        key = (raw_key,) if isinstance(raw_key, str) else tuple(raw_key)
        indexes = tuple(tuple(ix) for ix in meta.get("indexes") or ())
        arrow_schema, batches = _batches(obj)
        label = ".".join(context.asset_key.path)
        columns = pg_columns(arrow_schema, table=label)
        missing = [
            c for c in (*key, *(c for ix in indexes for c in ix)) if c not in arrow_schema.names
        ]
        if missing:
            raise SpecError(
                f"asset {label!r}: primary_key/indexes name missing column(s) {missing}"
            )
        preparer = BatchPreparer(columns, key=key, policy="fail", table=label)

        rows = replace_table(
            self._dsn(),
            TableTarget(schema=schema, table=table, primary_key=key, indexes=indexes, label=label),
            columns,
            preparer.stream(batches),
        )
        context.add_output_metadata(
            {
                "dagster/row_count": rows,
                "postgres_table": f"{schema}.{table}",
                "skipped_null_keys": preparer.skipped_null_keys,
            }
        )

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        """The upstream asset's table as a polars DataFrame."""
        schema, table = self._table(context.upstream_output or context)
        with connect(self._dsn()) as conn:
            dtypes = polars_dtypes(catalog.column_types(conn, schema, table))
            query = ddl.select_all(schema, table).as_string(conn)
            return pl.read_database(query, connection=conn, schema_overrides=dtypes)

    def _land(self, context: dg.OutputContext, pending: PendingSync) -> None:
        """Write the planned sync into the Postgres it was planned against, with its checkpoint;
        a checkpoint that moved since the plan (another sync) retries the step, which re-plans."""
        table = pending.plan.table
        try:
            result = land_sync(
                pending.plan, pending.dsn, on_progress=progress_logger(context.log, table)
            )
        except Exception as exc:
            raise dagster_error(
                context.log, _retry_number(context), synced_table(table), exc
            ) from exc
        context.log.info(
            f"{table.name}: version {result.version}, {result.rows:,} rows via {result.path} "
            f"in {result.seconds:.2f}s" + (f" ({result.reason})" if result.reason else "")
        )
        status = read_table_status(table, pending.dsn)
        with connect(pending.dsn, autocommit=True) as conn:
            columns = catalog.column_types(conn, table.pg_schema, table.pg_table)
        context.add_output_metadata(events.sync_metadata(table, result, status, columns))

    def _dsn(self) -> str:
        return self.dsn or settings.pg_dsn()

    def _table(self, context: Any) -> tuple[str, str]:
        path = list(context.asset_key.path)
        return (path[-2] if len(path) > 1 else self.default_schema), path[-1]


def _retry_number(context: dg.OutputContext) -> int:
    """Which attempt of the step this is (0 outside a run, as in `build_output_context`)."""
    try:
        return context.step_context.previous_attempt_count
    except Exception:
        return 0


def _batches(obj: Frame) -> tuple[pa.Schema, Iterable[pa.RecordBatch]]:
    if isinstance(obj, pl.LazyFrame):
        obj = obj.collect()
    if isinstance(obj, pl.DataFrame):
        obj = obj.to_arrow()
    if isinstance(obj, pa.Table):
        return obj.schema, obj.to_batches(max_chunksize=65_536)
    if isinstance(obj, pa.RecordBatchReader):
        return obj.schema, obj
    iterator: Iterator[pa.RecordBatch] = iter(obj)
    first = next(iterator, None)
    if first is None:
        raise SpecError("the asset returned an empty stream of record batches (no schema)")

    def chained() -> Iterator[pa.RecordBatch]:
        yield first
        yield from iterator

    return first.schema, chained()
