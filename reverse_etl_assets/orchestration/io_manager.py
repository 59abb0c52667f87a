"""A Postgres IO manager: what an asset returns lands in a Postgres table, swapped in atomically.

Same writer as snapshot syncs (binary COPY into an index-free table, keys built after, one swap).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, TypeAlias

import dagster as dg
import polars as pl
import psycopg
import pyarrow as pa

from reverse_etl_assets import settings
from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.postgres import ddl
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.table_load import TableTarget, replace_table
from reverse_etl_assets.transform.cleaning import BatchPreparer
from reverse_etl_assets.transform.types import pg_columns

Frame: TypeAlias = (
    pl.DataFrame | pl.LazyFrame | pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch]
)

# Column types read back as the polars dtypes they were written from. Left to itself,
# read_database infers from Python values: integer -> Int64, numeric(10,2) -> Decimal(38,2),
# timestamptz in the session's TimeZone, and Null for every column of an empty table.
POLARS_TYPES: dict[str, pl.DataType] = {
    "bigint": pl.Int64(),
    "integer": pl.Int32(),
    "smallint": pl.Int16(),
    "boolean": pl.Boolean(),
    "real": pl.Float32(),
    "double precision": pl.Float64(),
    "text": pl.String(),
    "bytea": pl.Binary(),
    "date": pl.Date(),
    "timestamp with time zone": pl.Datetime("us", "UTC"),
    "timestamp without time zone": pl.Datetime("us"),
    "interval": pl.Duration("us"),
    "time without time zone": pl.Time(),
}
NUMERIC = re.compile(r"numeric\((\d+),(\d+)\)")


class PostgresTableIOManager(dg.ConfigurableIOManager):
    """Stores polars DataFrames, Arrow tables or record-batch streams as Postgres tables.

    The table is the asset key's last part, in the schema named by the part before it (or
    `default_schema`). Output metadata `primary_key` (list of columns) and `indexes` (list of
    lists) are honoured; rows with a NULL key are skipped and counted.
    """

    dsn: str = ""
    default_schema: str = "public"

    def handle_output(self, context: dg.OutputContext, obj: Frame) -> None:
        """Replace the asset's table with `obj`."""
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
            dtypes = _polars_dtypes(conn, schema, table)
            query = ddl.select_all(schema, table).as_string(conn)
            return pl.read_database(query, connection=conn, schema_overrides=dtypes)

    def _dsn(self) -> str:
        return self.dsn or settings.pg_dsn()

    def _table(self, context: Any) -> tuple[str, str]:
        path = list(context.asset_key.path)
        return (path[-2] if len(path) > 1 else self.default_schema), path[-1]


def _polars_dtypes(conn: psycopg.Connection, schema: str, table: str) -> dict[str, pl.DataType]:
    """The polars dtype of each column whose Postgres type says it (jsonb is left to inference)."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (ddl.qualified(schema, table).as_string(conn),),
    ).fetchall()
    dtypes: dict[str, pl.DataType] = {}
    for name, pg_type in rows:
        if numeric := NUMERIC.fullmatch(pg_type):
            dtypes[name] = pl.Decimal(int(numeric[1]), int(numeric[2]))
        elif pg_type in POLARS_TYPES:
            dtypes[name] = POLARS_TYPES[pg_type]
    return dtypes


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
