"""Binary COPY chunks: whatever part of a batch the encoder still buffers at the end, every row
reaches Postgres exactly once."""

from __future__ import annotations

import psycopg
import pyarrow as pa
import pytest

from reverse_etl_assets.postgres import binary_copy
from reverse_etl_assets.schema.delta_to_postgres import pg_columns


@pytest.mark.parametrize("rows", [0, 7, 100_000])
def test_every_row_of_small_and_large_batches_lands_once(pg_dsn: str, rows: int) -> None:
    batch = pa.record_batch(
        {
            "id": pa.array(range(rows), pa.int64()),
            "v": pa.array([f"row {i}" for i in range(rows)], pa.string()),
        }
    )
    columns = pg_columns(batch.schema, table="t")
    with psycopg.connect(pg_dsn) as conn, conn.transaction(force_rollback=True):
        conn.execute("CREATE TEMP TABLE t (id bigint, v text)")
        chunks = [binary_copy.encode_rows(batch, columns), binary_copy.encode_rows(batch, columns)]
        with conn.cursor() as cur:
            binary_copy.copy_rows(cur, schema="pg_temp", table="t", columns=columns, chunks=chunks)
        found = conn.execute("SELECT count(*), count(DISTINCT id), max(v) FROM t").fetchone()
    assert found == (2 * rows, rows, None if rows == 0 else max(f"row {i}" for i in range(rows)))
