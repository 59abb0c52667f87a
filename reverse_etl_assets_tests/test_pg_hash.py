"""The Delta side of verify: Postgres's row hashes recomputed over Arrow must equal what Postgres
computes over the same rows once a sync landed them, for every mapped type and its edge values.
"""

from __future__ import annotations

import datetime
import math
from decimal import Decimal

import numpy as np
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from reverse_etl_assets.postgres import binary_copy, ddl, fingerprint
from reverse_etl_assets.schema.delta_to_postgres import key_columns, pg_columns, to_wire
from reverse_etl_assets.transform import pg_hash

UTC = datetime.UTC


def wide_table() -> pa.Table:
    """One column per mapped type, with the values that round-trip tests care about."""
    texts = ["", "a", "abcd", "abcdefghijk", "abcdefghijkl", "abcdefghijklm", "é☃" * 40, None]
    n = len(texts)
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "i8": pa.array([0, 1, -1, 2**31, -(2**31) - 5, 2**63 - 1, -(2**63), None], pa.int64()),
            "i4": pa.array([0, 1, -1, 2**31 - 1, -(2**31), 7, 8, None], pa.int32()),
            "i2": pa.array([0, 1, -1, 32767, -32768, 2, 3, None], pa.int16()),
            "i1": pa.array([0, 1, -1, 127, -128, 2, 3, None], pa.int8()),
            "b": pa.array([True, False, None, True, False, True, False, None]),
            "f8": pa.array([0.0, -0.0, math.nan, math.inf, -math.inf, 1e-300, 0.1, None]),
            "f4": pa.array(
                [0.0, -0.0, math.nan, math.inf, -math.inf, 1.5, 0.1, None], pa.float32()
            ),
            "dec": pa.array(
                [
                    Decimal("0"),
                    Decimal("-0.000000000000000001"),
                    Decimal("99999999999999999999.999999999999999999"),
                    Decimal("-99999999999999999999.999999999999999999"),
                    Decimal("1.5"),
                    Decimal("-1.5"),
                    Decimal("10"),
                    None,
                ],
                pa.decimal128(38, 18),
            ),
            "d10": pa.array(
                [Decimal(v) for v in ("0", "-0.01", "99999999.99", "-99999999.99", "1.5")]
                + [Decimal("-1.5"), Decimal("10"), None],
                pa.decimal128(10, 2),
            ),
            "d18": pa.array(
                [0, -1, 10**18 - 1, -(10**18) + 1, 15, -15, 10, None], pa.decimal128(18, 0)
            ),
            "s": pa.array(texts),
            "ls": pa.array(texts, pa.large_string()),
            "bin": pa.array([None if t is None else t.encode() for t in texts], pa.binary()),
            "d": pa.array(
                [datetime.date(1, 1, 1), datetime.date(9999, 12, 31), datetime.date(2000, 1, 1)]
                + [datetime.date(1970, 1, 1)] * 4
                + [None],
                pa.date32(),
            ),
            "ts": pa.array(
                [
                    datetime.datetime(1, 1, 1, tzinfo=UTC),
                    datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                    datetime.datetime(2000, 1, 1, tzinfo=UTC),
                    datetime.datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
                ]
                + [datetime.datetime(2024, 5, 6, 7, 8, 9, 123, tzinfo=UTC)] * 3
                + [None],
                pa.timestamp("us", tz="UTC"),
            ),
            "ntz": pa.array(
                [datetime.datetime(1, 1, 1), datetime.datetime(9999, 12, 31, 23, 59, 59)] * 3
                + [datetime.datetime(2000, 1, 1), None],
                pa.timestamp("us"),
            ),
            "dur": pa.array(
                [datetime.timedelta(seconds=3723.5), -datetime.timedelta(hours=5)] * 3
                + [datetime.timedelta(days=400, microseconds=1), None],
                pa.duration("us"),
            ),
            "arr": pa.array(
                [[1, None, 3], [], None, [2**62], [-0], [5], [6], None], pa.list_(pa.int64())
            ),
            "map": pa.array(
                [
                    [("k", 1.5), ("jj", None)],
                    [],
                    None,
                    [("a", 1e20)],
                    [("b", -0.0)],
                    [("é", math.nan)],
                    [("x", 1e-7)],
                    None,
                ],
                pa.map_(pa.string(), pa.float64()),
            ),
            "st": pa.array(
                [
                    {"zz": 1, "a": None, "bin": b"\x00a", "dec": Decimal("1.50")},
                    {"zz": None, "a": 'q"uo\\te\n\u0001', "bin": None, "dec": None},
                    None,
                ]
                + [{"zz": 2, "a": "x", "bin": b"", "dec": Decimal("-0.00")}] * 5,
                pa.struct(
                    [
                        ("zz", pa.int64()),
                        ("a", pa.string()),
                        ("bin", pa.binary()),
                        ("dec", pa.decimal128(5, 2)),
                    ]
                ),
            ),
        }
    )


def land(dsn: str, data: pa.Table) -> tuple[pa.RecordBatch, tuple]:
    """Create the table the sync would and binary-COPY the rows in; return the wire batch."""
    columns = pg_columns(data.schema, table="t")
    wire = to_wire(data.combine_chunks().to_batches()[0], columns)
    with psycopg.connect(dsn) as conn:
        conn.execute(ddl.create_table("public", "t", columns))
        with conn.cursor() as cur:
            encoded = binary_copy.encode_rows(wire, columns)
            binary_copy.copy_rows(
                cur, schema="public", table="t", columns=columns, chunks=[encoded]
            )
    return wire, columns


def test_row_hashes_equal_postgres_for_every_type(pg_dsn: str) -> None:
    wire, columns = land(pg_dsn, wide_table())
    mine = pg_hash.row_hashes(wire, columns)
    keys = pg_hash.key_hashes(wire, key_columns(columns, ("id",)))
    query = sql.SQL("SELECT {}, {} FROM t ORDER BY id").format(
        fingerprint.row_hash(columns), fingerprint.key_hash(key_columns(columns, ("id",)))
    )
    with psycopg.connect(pg_dsn) as conn:
        theirs = conn.execute(query).fetchall()
    assert [int(h) % 2**64 for h, _ in theirs] == [int(h) for h in mine]
    assert [int(k) % 2**64 for _, k in theirs] == [int(k) for k in keys]


@pytest.mark.parametrize("name", [n for n in wide_table().column_names if n != "id"])
def test_each_column_hash_equals_postgres(pg_dsn: str, name: str) -> None:
    """Column by column, so a failure names the type."""
    data = wide_table().select(["id", name])
    wire, columns = land(pg_dsn, data)
    column = columns[1]
    mine = pg_hash.column_hash(wire.column(name), column)
    element = fingerprint.key_hash([column])  # hash_record_extended(ROW(column), 0)
    with psycopg.connect(pg_dsn) as conn:
        theirs = conn.execute(
            sql.SQL(
                "SELECT CASE WHEN {c} IS NULL THEN NULL ELSE {h} END FROM t ORDER BY id"
            ).format(c=sql.Identifier(name), h=element)
        ).fetchall()
    # ROW(x) folds one element: 0 * 31 + hash(x); a NULL element hashes to 0.
    assert [0 if h is None else int(h) % 2**64 for (h,) in theirs] == [int(h) for h in mine]


@pytest.mark.parametrize("seed", [1, 7, 2**40 + 3])
def test_each_seeded_column_hash_equals_postgres(pg_dsn: str, seed: int) -> None:
    """The row hash's elements: every type's own hash function called with a seed, as SQL
    spells it, equals the one recomputed here (NULL: 0)."""
    wire, columns = land(pg_dsn, wide_table())
    with psycopg.connect(pg_dsn) as conn:
        for column in columns:
            query = sql.SQL("SELECT {} FROM t ORDER BY id").format(
                fingerprint.column_hash(column, seed)
            )
            theirs = [int(h) % 2**64 for (h,) in conn.execute(query).fetchall()]
            mine = pg_hash.column_hash(wire.column(column.name), column, seed=seed)
            assert theirs == [int(h) for h in mine], column


def test_values_swapped_between_columns_of_a_row_change_its_hash() -> None:
    """Columns of one type are told apart by their seeds (an XOR alone would not)."""
    schema = pa.schema([("id", pa.int64()), ("a", pa.string()), ("b", pa.string())])
    columns = pg_columns(schema, table="t")
    rows = pa.record_batch([pa.array([1, 1], pa.int64()), ["x", "y"], ["y", "x"]], schema=schema)
    first, swapped = pg_hash.row_hashes(rows, columns)
    assert first != swapped


@pytest.mark.parametrize(
    "texts",
    [
        ["x" * n + "é" for n in range(0, 200, 7)] + ["y" * 5000],  # longest first
        ["x" * n for n in range(0, 49, 5)],  # all together, finished values kept
        ["x" * 23, "y" * 23, "z" * 30],  # all together, every value in every round
    ],
)
def test_long_strings_hash_in_rounds_of_twelve_bytes(pg_dsn: str, texts: list[str]) -> None:
    wire, _ = land(pg_dsn, pa.table({"id": range(len(texts)), "s": texts}))
    with psycopg.connect(pg_dsn) as conn:
        for seed in (0, 3):
            theirs = conn.execute(
                "SELECT hashtextextended(s, %s) FROM t ORDER BY id", (seed,)
            ).fetchall()
            mine = pg_hash.hash_bytes(wire.column("s"), seed)
            assert [int(h) % 2**64 for (h,) in theirs] == [int(h) for h in mine]


def test_a_null_is_told_from_a_value_hashing_to_zero() -> None:
    columns = pg_columns(pa.schema([("id", pa.int64()), ("f", pa.float64())]), table="t")
    zero = pa.record_batch({"id": pa.array([1], pa.int64()), "f": pa.array([0.0])})
    null = pa.record_batch({"id": pa.array([1], pa.int64()), "f": pa.array([None], pa.float64())})
    assert pg_hash.column_hash(zero.column("f"), columns[1])[0] == 0  # as Postgres's own
    assert pg_hash.row_hashes(zero, columns)[0] != pg_hash.row_hashes(null, columns)[0]


def test_jsonb_text_is_what_postgres_prints(pg_dsn: str) -> None:
    texts = [
        '{"b":1,"aa":[1,2.50,{"z":null,"y":true}],"a":"x\\u0001\\"é"}',
        "[]",
        "{}",
        '"s"',
        "1e20",
        "-0.0",
        '{"k":1,"k":2}',
        "[1.5e3,-0,1E-7,12345678901234567890]",
        None,
    ]
    with psycopg.connect(pg_dsn) as conn:
        theirs = [conn.execute("SELECT %s::jsonb::text", (t,)).fetchone()[0] for t in texts]  # type: ignore[index]
    assert pg_hash.jsonb_text(pa.array(texts)).to_pylist() == theirs


def test_sums_wrap_like_postgres_numeric_modulo() -> None:
    hashes = np.array([2**64 - 1, 2], dtype=np.uint64)
    assert int(hashes.sum(dtype=np.uint64)) == 1


def test_json_hashed_by_postgres_equals_json_hashed_here(pg_dsn: str) -> None:
    texts = pa.array(['{"b":1,"aa":[1,2.50,{"z":null}]}', "[]", None, "1e20", '{"k":1,"k":2}'])
    with psycopg.connect(pg_dsn) as conn:
        by_postgres = fingerprint.hash_json_texts(conn, texts)
        seeded = fingerprint.hash_json_texts(conn, texts, 5)
    assert by_postgres.tolist() == pg_hash.hash_json_here(texts, 0).tolist()
    assert seeded.tolist() == pg_hash.hash_json_here(texts, 5).tolist()
    assert seeded[0] != by_postgres[0]
    assert by_postgres[2] == 0 and seeded[2] == 0
    for one in (pa.array([None], pa.string()), pa.array(["[]"]), pa.array([], pa.string())):
        with psycopg.connect(pg_dsn) as conn:
            assert fingerprint.hash_json_texts(conn, one).tolist() == (
                pg_hash.hash_json_here(one, 0).tolist()
            )


def test_the_row_hash_sql_presents_numerics_and_json_as_pg_hash_does() -> None:
    columns = pg_columns(wide_table().select(["id", "d10", "dec", "st"]).schema, table="t")
    text = fingerprint.row_hash(columns).as_string()
    assert text == (
        'hashint8extended(coalesce(hashint8extended("id", 1), 0) # '
        'coalesce(hashint8extended(("d10" * 100)::bigint, 2), 0) # '
        'coalesce(hashtextextended("dec"::text, 3), 0) # '
        'coalesce(hashtextextended("st"::text, 4), 0), 0)'
    )
    assert [pg_hash.hash_form(c) for c in columns] == ["value", "scaled", "text", "text"]
