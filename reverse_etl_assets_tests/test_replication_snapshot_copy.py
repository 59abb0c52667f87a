"""Snapshot reads under a slot's exported snapshot: exact rows, partitions, bounded memory."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pyarrow as pa
import pytest

from reverse_etl_assets.postgres.replication.slot import create_slot, drop_slot, table_columns
from reverse_etl_assets.postgres.replication.snapshot_copy import (
    build_copy_query,
    copy_batches,
    table_partitions,
)

SLOT = "reverse_etl_copy_test"

# NULL, '', newlines, quotes, commas, backslashes and unicode in text; NULLs in every type.
FILL = """
INSERT INTO t
SELECT g,
       CASE g %% 7 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN E'line\\nbreak "q", \\\\ ' || g
                  WHEN 3 THEN '"' WHEN 4 THEN 'NULL' WHEN 5 THEN 'é😀'
                  ELSE repeat('x', g %% 50) END,
       CASE WHEN g %% 11 = 0 THEN NULL ELSE (g * 1.25)::numeric(12,2) END,
       CASE WHEN g %% 13 = 0 THEN NULL
            ELSE timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' END,
       CASE WHEN g %% 17 = 0 THEN NULL ELSE decode(lpad(to_hex(g), 8, '0'), 'hex') END
FROM generate_series(1, %s::int) AS g
"""


def make_table(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t (id int8 PRIMARY KEY, s text, n numeric(12,2), ts timestamptz, b bytea)"
        )
        conn.execute(FILL, [rows])
        conn.execute("ANALYZE t")


def drop(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        drop_slot(conn, SLOT)


@pytest.mark.slow
def test_partitions_under_the_snapshot_equal_the_table_exactly(pg_dsn: str) -> None:
    make_table(pg_dsn, 200_000)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        info = table_columns(conn, "public", "t")
        assert info is not None
        with create_slot(pg_dsn, SLOT) as exported:
            conn.execute("INSERT INTO t VALUES (-1, 'late', NULL, NULL, NULL)")
            conn.execute("DELETE FROM t WHERE id = 5")
            parts = table_partitions(conn, "public", "t", parts=3)
            assert len(parts) == 3 and all(p for p in parts)
            tables = [
                pa.Table.from_batches(
                    list(
                        copy_batches(
                            pg_dsn,
                            snapshot_name=exported.snapshot_name,
                            schema="public",
                            table="t",
                            columns=info.columns,
                            where=where,
                            batch_bytes=1 << 20,
                        )
                    )
                )
                for where in [None, *parts]
            ]
        whole, pieces = tables[0], pa.concat_tables(tables[1:])
        # Expected: the table as it was at slot creation (row 5 present, row -1 absent).
        conn.execute("DELETE FROM t WHERE id = -1")
        conn.execute(
            FILL.replace("generate_series(1, %s::int)", "generate_series(%s::int, %s::int)"), [5, 5]
        )
        want = sorted(conn.execute("SELECT id, s, n, ts, b FROM t").fetchall())
    drop(pg_dsn)
    assert whole.num_rows == pieces.num_rows == 200_000
    assert whole.schema.field("b").type == pa.binary()
    got_whole = sorted(zip(*(c.to_pylist() for c in whole.columns), strict=True))
    got_pieces = sorted(zip(*(c.to_pylist() for c in pieces.columns), strict=True))
    assert got_whole == want
    assert got_pieces == want
    strings = whole.column("s").to_pylist()
    assert None in strings and "" in strings and '"' in strings and "NULL" in strings


def test_memory_stays_bounded(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int8, s text)")
        conn.execute(
            "INSERT INTO t SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 150000) g"
        )
        info = table_columns(conn, "public", "t")
        assert info is not None
        with create_slot(pg_dsn, SLOT) as exported:
            rows, table_bytes, peak = 0, 0, 0
            baseline = pa.total_allocated_bytes()
            for batch in copy_batches(
                pg_dsn,
                snapshot_name=exported.snapshot_name,
                schema="public",
                table="t",
                columns=info.columns,
                batch_bytes=1 << 20,
            ):
                rows += batch.num_rows
                table_bytes += batch.nbytes
                peak = max(peak, pa.total_allocated_bytes() - baseline)
    drop(pg_dsn)
    assert rows == 150_000
    assert table_bytes > 30 << 20  # ~40 MB read in total ...
    assert peak < 16 << 20, peak  # ... while Arrow never held more than a few 1 MB blocks


def test_empty_table_yields_nothing_and_where_must_be_a_tid_range(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int8, s text)")
        info = table_columns(conn, "public", "t")
        assert info is not None
        assert table_partitions(conn, "public", "t", parts=4) == [None]
        with create_slot(pg_dsn, SLOT) as exported:
            batches = copy_batches(
                pg_dsn,
                snapshot_name=exported.snapshot_name,
                schema="public",
                table="t",
                columns=info.columns,
            )
            assert list(batches) == []
            with pytest.raises(ValueError, match="TID range"):
                list(
                    copy_batches(
                        pg_dsn,
                        snapshot_name=exported.snapshot_name,
                        schema="public",
                        table="t",
                        columns=info.columns,
                        where="true; DROP TABLE t",
                    )
                )
    drop(pg_dsn)


def test_partitions_are_integer_page_ranges(pg_dsn: str) -> None:
    make_table(pg_dsn, 20_000)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        parts = table_partitions(conn, "public", "t", parts=2)
        pages = conn.execute(
            "SELECT pg_relation_size('t') / current_setting('block_size')::int"
        ).fetchone()
    assert pages is not None
    middle = pages[0] // 2
    assert parts == [f"ctid < '({middle},0)'", f"ctid >= '({middle},0)'"]
    info_cols = build_copy_query("public", "t", [], parts[0]).as_string(None)
    assert info_cols.endswith(f"WHERE ctid < '({middle},0)') TO STDOUT (FORMAT csv)")


@pytest.mark.slow
def test_throughput_one_connection_and_two_partitions(pg_dsn: str) -> None:
    """Prints rows/s for 1M rows x 10 columns; asserts only the row counts."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE w (id int8 PRIMARY KEY, a int4, b text, c numeric(12,2),"
            " d timestamptz, e bool, f float8, g date, h text, i int8)"
        )
        conn.execute(
            "INSERT INTO w SELECT g, g % 1000, md5(g::text), g * 0.01,"
            " timestamptz '2024-01-01' + g * interval '1 s', g % 2 = 0, g / 7.0,"
            " date '2000-01-01' + g % 3000, 'row ' || g, g * 3 FROM generate_series(1, 1000000) g"
        )
        conn.execute("VACUUM ANALYZE w")
        info = table_columns(conn, "public", "w")
        assert info is not None
        with create_slot(pg_dsn, SLOT) as exported:

            def count(where: str | None) -> int:
                return sum(
                    b.num_rows
                    for b in copy_batches(
                        pg_dsn,
                        snapshot_name=exported.snapshot_name,
                        schema="public",
                        table="w",
                        columns=info.columns,
                        where=where,
                    )
                )

            start = time.perf_counter()
            single = count(None)
            one = time.perf_counter() - start
            parts = table_partitions(conn, "public", "w", parts=2)
            start = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                both = sum(pool.map(count, parts))
            two = time.perf_counter() - start
    drop(pg_dsn)
    assert single == both == 1_000_000
    print(
        f"\ncopy_batches 1M rows x 10 cols: one connection {single / one:,.0f} rows/s"
        f" ({one:.2f} s);"
        f" 2 partitions in threads {both / two:,.0f} rows/s ({two:.2f} s)"
    )
