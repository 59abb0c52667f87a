"""Arrow record batches -> Postgres binary COPY, encoded column-wise by pgpq (no per-row Python).

The encoder is configured from the type map, so DDL and wire format never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pgpq
import psycopg
import pyarrow as pa
from pgpq import encoders
from pgpq import schema as pg_schema

from reverse_etl_assets.postgres import ddl
from reverse_etl_assets.schema.delta_to_postgres import PgColumn


def new_encoder(
    wire_schema: pa.Schema, columns: tuple[PgColumn, ...]
) -> pgpq.ArrowToPostgresBinaryEncoder:
    """A pgpq encoder for batches already converted by `to_wire`; JSON text goes out as jsonb."""
    builders: dict[str, Any] = {}
    for column, field in zip(columns, wire_schema, strict=True):
        if column.wire == "json":
            builders[field.name] = encoders.LargeStringEncoderBuilder.new_with_output(
                field, pg_schema.Jsonb()
            )
        else:
            builders[field.name] = pgpq.ArrowToPostgresBinaryEncoder.infer_encoder(field)
    return pgpq.ArrowToPostgresBinaryEncoder.new_with_encoders(wire_schema, builders)


HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"


def encode_rows(batch: pa.RecordBatch, columns: tuple[PgColumn, ...]) -> bytes:
    """The rows of one wire batch as binary COPY tuples, without the stream header or trailer.

    Row-aligned chunks let several COPY streams share one producer; the header and trailer
    (fixed by the COPY protocol) are written once per stream by `copy_rows`.
    """
    encoder = new_encoder(batch.schema, columns)
    header = encoder.write_header()
    body = encoder.write_batch(batch)
    tail = encoder.finish()  # what the encoder still buffered, then the trailer
    if header != HEADER or not tail.endswith(TRAILER):
        raise RuntimeError("pgpq produced an unexpected binary COPY framing")
    if len(tail) == len(TRAILER):
        return body  # a large batch: its rows as written, not copied (a copy costs a fifth)
    rest = tail[: -len(TRAILER)]
    return body + rest if body else rest


def copy_rows(
    cursor: psycopg.Cursor,
    *,
    schema: str,
    table: str,
    columns: tuple[PgColumn, ...],
    chunks: Iterable[bytes],
) -> None:
    """One binary COPY into `table` of row chunks made by `encode_rows`."""
    with cursor.copy(ddl.copy_from_stdin(schema, table, columns)) as copy:
        copy.write(HEADER)
        for chunk in chunks:
            copy.write(chunk)
        copy.write(TRAILER)
