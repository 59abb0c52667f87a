"""Read a table as of a slot's exported snapshot into typed Arrow batches, streaming.

COPY … (FORMAT csv) feeds pyarrow's CSV reader block by block; casts are column-wise, not per row.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql

from reverse_etl_assets.errors import DataError, TransientError
from reverse_etl_assets.postgres.replication.messages import RelationColumn
from reverse_etl_assets.postgres.replication.problems import first_line
from reverse_etl_assets.postgres.replication.session import connect_session
from reverse_etl_assets.schema.postgres_to_delta import arrow_schema, cast_column

# The only WHERE clauses copy_batches runs: TID ranges made of integers (see table_partitions).
_TID_RANGE = re.compile(
    r"^(ctid >= '\(\d+,0\)')?( AND )?(ctid < '\(\d+,0\)')?$",
)


def table_partitions(
    conn: psycopg.Connection, schema: str, table: str, *, parts: int
) -> list[str | None]:
    """Split a table into `parts` ctid page ranges (TID range scans, PostgreSQL 14+)."""
    row = conn.execute(
        sql.SQL(
            "SELECT pg_relation_size({t}::regclass) / current_setting('block_size')::bigint"
        ).format(t=sql.Literal(sql.Identifier(schema, table).as_string(conn)))
    ).fetchone()
    pages = int(row[0]) if row else 0
    if parts <= 1 or pages < parts:
        return [None]
    bounds = [pages * index // parts for index in range(1, parts)]
    ranges: list[str | None] = []
    lower: int | None = None
    for upper in [*bounds, None]:
        # Open ends: pages added after sizing (or before it, under the snapshot) still belong.
        terms = []
        if lower is not None:
            terms.append(f"ctid >= '({int(lower)},0)'")
        if upper is not None:
            terms.append(f"ctid < '({int(upper)},0)'")
        ranges.append(" AND ".join(terms))
        lower = upper
    return ranges


def copy_batches(
    dsn: str,
    *,
    snapshot_name: str | None,
    schema: str,
    table: str,
    columns: Sequence[RelationColumn],
    where: str | None = None,
    batch_bytes: int = 8 << 20,
) -> Iterator[pa.RecordBatch]:
    """Yield the table's rows (optionally a TID range) under the snapshot as typed batches;
    without a snapshot name, as of a fresh repeatable-read snapshot of their own."""
    if where is not None and not (where and _TID_RANGE.match(where)):
        raise ValueError(f"copy_batches takes only a TID range from table_partitions: {where!r}")
    typed = arrow_schema(columns)
    query = build_copy_query(schema, table, columns, where)
    try:
        conn = connect_session(dsn)
    except psycopg.OperationalError as exc:
        raise TransientError(
            f"cannot connect to read {schema}.{table} for its snapshot: {first_line(exc)}"
        ) from exc
    try:
        conn.autocommit = True  # BEGIN is ours: SET TRANSACTION SNAPSHOT must come first in it
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        if snapshot_name is not None:
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
        with conn.cursor() as cur, cur.copy(query) as copy:
            names = [f"c{index}" for index in range(len(columns))]
            reader = _open_csv(_CopyReader(iter(copy)), names, batch_bytes)
            if reader is None:
                return
            for batch in reader:
                try:
                    arrays = [
                        cast_column(column, batch.column(index))
                        for index, column in enumerate(columns)
                    ]
                except DataError as exc:  # the casts name the column and the value
                    raise DataError(f"table {schema}.{table}: {exc}") from exc
                yield pa.RecordBatch.from_arrays(arrays, schema=typed)
    except psycopg.OperationalError as exc:
        raise TransientError(
            f"reading {schema}.{table} under snapshot {snapshot_name} failed: {first_line(exc)}"
        ) from exc
    finally:
        conn.close()


def build_copy_query(
    schema: str, table: str, columns: Sequence[RelationColumn], where: str | None
) -> sql.Composed:
    """The COPY (SELECT …) TO STDOUT (FORMAT csv) statement for the columns and range."""
    select = sql.SQL("SELECT {cols} FROM {t}").format(
        cols=sql.SQL(", ").join(sql.Identifier(c.name) for c in columns),
        t=sql.Identifier(schema, table),
    )
    if where is not None:
        # Safe: `where` matched _TID_RANGE, so it holds only fixed words and integers.
        select = sql.SQL("{} WHERE {}").format(select, sql.SQL(where))
    return sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(select)


def _open_csv(
    source: io.RawIOBase, names: list[str], batch_bytes: int
) -> pa_csv.CSVStreamingReader | None:
    """A streaming CSV reader keeping every value as bytes, NULL (unquoted empty) apart from ''."""
    try:
        return pa_csv.open_csv(
            source,
            read_options=pa_csv.ReadOptions(column_names=names, block_size=batch_bytes),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                # Read as UTF-8 text: the CSV reader validates it while parsing, in C++, so the
                # casts do not validate each column again (bytea reinterprets it for free).
                column_types={name: pa.string() for name in names},
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return None
        raise


class _CopyReader(io.RawIOBase):
    """A read-only file over COPY's chunks, so pyarrow pulls only what it parses next."""

    def __init__(self, chunks: Iterator[bytes | bytearray | memoryview]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Fill `buffer` from the pending chunk or the next ones; 0 at the end of the COPY."""
        target = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(target):
            if not self._pending:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._pending = memoryview(chunk).cast("B")
                continue
            count = min(len(self._pending), len(target) - filled)
            target[filled : filled + count] = self._pending[:count]
            self._pending = self._pending[count:]
            filled += count
        return filled
