"""The Postgres → Arrow/Delta type map: real server text forms, cast, compared with psycopg."""

from __future__ import annotations

import ipaddress
import math
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from psycopg import sql

from reverse_etl_assets.postgres.replication.messages import RelationColumn
from reverse_etl_assets.postgres.replication.session import connect_session
from reverse_etl_assets.postgres.replication.slot import table_columns
from reverse_etl_assets.schema.postgres_to_delta import (
    UnrepresentableValue,
    arrow_schema,
    arrow_type,
    cast_column,
    numeric_type,
)

COLUMNS = """
    id int PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8,
    n numeric(38,18), n2 numeric(10,2), nu numeric, nw numeric(50,5),
    f4 float4, f8 float8, by bytea, d date, ts timestamp, tstz timestamptz,
    tx text, vc varchar(10), bp char(5), nm name, u uuid, ip inet, cd cidr, mac macaddr,
    tm time, tmz timetz, iv interval, mo money, j json, jb jsonb, mood mood,
    ai int4[], at text[], an numeric(10,2)[], ats timestamptz[], aby bytea[], ab bool[],
    a2 int4[], amood mood[]
"""

ROWS = [
    """(1, true, 1, 2, 3, 1.5, 2.25, 3.125, 4.5, 1.1, 2.2, '\\x00ff00'::bytea, '2024-02-29',
        '2024-01-01 10:00:00.123456', '2024-01-01 10:00:00.654321+05:30', 'héllo 😀', 'abc',
        'ab', 'nm', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '10.0.0.0/8',
        '08:00:2b:01:02:03', '12:34:56.789', '12:34:56+02', '1 day 02:03:04', 12.34,
        '{"a": [1, 2]}', '{"b": {"c": null}}', 'happy',
        '{1,NULL,3}', '{"a,b","c\\"d","e\\\\f",NULL,"NULL",""}', '{1.50,NULL}',
        '{"2024-01-01 00:00:00+00",NULL}', '{"\\\\x0001",NULL}', '{t,f,NULL}', '{}',
        '{happy,sad}')""",
    """(2, false, -32768, -2147483648, -9223372036854775808,
        -99999999999999999999.999999999999999999, -99999999.99,
        123456789012345678901234567890123456789012345.678901234567890, 'NaN',
        'NaN', 'NaN', '\\x'::bytea, '0001-01-01', '0001-01-01 00:00:00',
        '0001-01-01 00:00:00+00', '', '', '', '', '00000000-0000-0000-0000-000000000000',
        '::1', '::/0', '00:00:00:00:00:00', '00:00:00', '00:00:00-12', '-1 years -2 mons',
        -0.01, '[]', '[]', 'sad', '{}', '{}', '{}', '{}', '{}', '{}', '{-1}', '{}')""",
    """(3, NULL, 32767, 2147483647, 9223372036854775807,
        99999999999999999999.999999999999999999, 99999999.99, '-0.000000000000000000001',
        99999999999999999999999999999999999999999999.99999, 'Infinity', '-Infinity',
        '\\x000000'::bytea, '9999-12-31', '9999-12-31 23:59:59.999999',
        '9999-12-31 23:59:59.999999+00', ' lead and trail ', 'x', 'a', 'z',
        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'null', 'null', NULL,
        '{NULL}', '{"  sp  ","{brace}","new\nline"}', '{NULL}', '{NULL}', '{NULL}', '{NULL}',
        NULL, NULL)""",
    """(4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '-Infinity', 'Infinity', NULL, NULL,
        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)""",
]

EXPECTED_TYPES = {
    "b": pa.bool_(),
    "i2": pa.int16(),
    "i4": pa.int32(),
    "i8": pa.int64(),
    "n": pa.decimal128(38, 18),
    "n2": pa.decimal128(10, 2),
    "nu": pa.string(),
    "nw": pa.string(),
    "f4": pa.float32(),
    "f8": pa.float64(),
    "by": pa.binary(),
    "d": pa.date32(),
    "ts": pa.timestamp("us"),
    "tstz": pa.timestamp("us", "UTC"),
    "ai": pa.list_(pa.int32()),
    "at": pa.list_(pa.string()),
    "an": pa.list_(pa.decimal128(10, 2)),
    "ats": pa.list_(pa.timestamp("us", "UTC")),
    "aby": pa.list_(pa.binary()),
    "ab": pa.list_(pa.bool_()),
    "amood": pa.string(),
}
# Types kept as their Postgres text form: psycopg's `col::text` is the expected value.
# (bpchar::text would strip the pad blanks, so psycopg's own str is compared for `bp`.)
# (inet::text adds the /32 or /128 the output function omits: inet and cidr are compared parsed.)
TEXT_FORM = {"nu", "nw", "tx", "vc", "nm", "u", "mac", "tm", "tmz", "iv", "mo"}
TEXT_FORM |= {"j", "jb", "mood", "amood"}


def text_forms(conn: psycopg.Connection, query: sql.Composable) -> dict[str, pa.Array]:
    """The raw text form of every column of a query's result, as binary Arrow arrays."""
    cur = conn.execute(query)
    result = cur.pgresult
    assert result is not None
    names = [d.name for d in cur.description or []]
    return {
        name: pa.array(
            [result.get_value(row, col) for row in range(result.ntuples)], type=pa.binary()
        )
        for col, name in enumerate(names)
    }


@pytest.fixture
def typed_table(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TYPE mood AS ENUM ('happy', 'sad')")
        conn.execute(f"CREATE TABLE t ({COLUMNS})")
        for row in ROWS:
            conn.execute(f"INSERT INTO t VALUES {row}")
    return pg_dsn


def same(column: RelationColumn, got: Any, want: Any) -> bool:
    if column.name == "ip" and got is not None:
        # psycopg gives an address when there is no prefix and an interface when there is one.
        parsed = ipaddress.ip_interface(got)
        return bool(parsed == want or ("/" not in got and parsed.ip == want))
    if column.name == "cd" and got is not None:
        return ipaddress.ip_network(got) == want
    if isinstance(want, float) and isinstance(got, float):
        if math.isnan(want):
            return math.isnan(got)
        if column.type_oid == 700:  # float4: compare as the 32-bit float it is
            return struct.pack("!f", got) == struct.pack("!f", want)
    return bool(got == want)


def test_every_type_round_trips_against_psycopg(typed_table: str) -> None:
    with connect_session(typed_table) as conn:
        info = table_columns(conn, "public", "t")
        assert info is not None
        forms = text_forms(conn, sql.SQL("SELECT * FROM t ORDER BY id"))
    schema = arrow_schema(info.columns)
    for name, expected in EXPECTED_TYPES.items():
        assert schema.field(name).type == expected, name
    for name in TEXT_FORM - {"nu", "nw", "amood"} | {"bp", "ip", "cd"}:
        assert schema.field(name).type == pa.string(), name
    text_columns = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(c.name))
        if c.name in TEXT_FORM
        else sql.Identifier(c.name)
        for c in info.columns
    )
    with psycopg.connect(typed_table) as conn:
        conn.execute("SET extra_float_digits = 3")
        want_rows = conn.execute(
            sql.SQL("SELECT {} FROM t ORDER BY id").format(text_columns)
        ).fetchall()
    for index, column in enumerate(info.columns):
        cast = cast_column(column, forms[column.name])
        assert cast.type == schema.field(column.name).type
        got = cast.to_pylist()
        want = [row[index] for row in want_rows]
        if column.name == "d" or pa.types.is_list(cast.type) or column.name in ("ts", "tstz"):
            assert got == want, column.name
            continue
        for g, w in zip(got, want, strict=True):
            assert same(column, g, w), (column.name, g, w)
    # Spot checks that would catch a mapping that is merely self-consistent.
    by_name = {c.name: c for c in info.columns}
    assert cast_column(by_name["bp"], forms["bp"]).to_pylist()[0] == "ab   "
    assert cast_column(by_name["tx"], forms["tx"]).to_pylist()[:2] == ["héllo 😀", ""]
    assert cast_column(by_name["by"], forms["by"]).to_pylist()[:3] == [
        b"\x00\xff\x00",
        b"",
        b"\x00\x00\x00",
    ]
    assert cast_column(by_name["at"], forms["at"]).to_pylist()[0] == [
        "a,b",
        'c"d',
        "e\\f",
        None,
        "NULL",
        "",
    ]
    assert cast_column(by_name["n"], forms["n"]).to_pylist()[2] == Decimal(
        "99999999999999999999.999999999999999999"
    )


@pytest.mark.parametrize(
    ("type_sql", "value", "reason"),
    [
        ("date", "infinity", "infinite"),
        ("date", "-infinity", "infinite"),
        ("date", "0044-03-15 BC", "before year 1"),
        ("date", "10000-01-01", "after 9999"),
        ("timestamp", "infinity", "infinite"),
        ("timestamp", "10000-01-01 00:00:00", "after 9999"),
        ("timestamptz", "0001-01-01 00:00:00+00 BC", "before year 1"),
        ("timestamptz", "-infinity", "infinite"),
        ("numeric(10,2)", "NaN", "NaN"),
        ("int4[]", "{{1,2},{3,4}}", "multi-dimensional"),
        ("date[]", "{2024-01-01,infinity}", "infinite"),
    ],
)
def test_unrepresentable_values_name_the_column(
    pg_dsn: str, type_sql: str, value: str, reason: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE u (id int, odd_col {type_sql})")
        conn.execute("INSERT INTO u VALUES (1, NULL), (2, %s)", [value])
    with connect_session(pg_dsn) as conn:
        info = table_columns(conn, "public", "u")
        assert info is not None
        forms = text_forms(conn, sql.SQL("SELECT * FROM u ORDER BY id"))
    column = info.columns[1]
    with pytest.raises(UnrepresentableValue, match=reason) as raised:
        cast_column(column, forms["odd_col"])
    assert raised.value.column == "odd_col"
    assert "odd_col" in str(raised.value) and raised.value.reason
    assert raised.value.value
    assert raised.value.terminal


def test_numeric_typmods() -> None:
    def typmod(precision: int, scale: int) -> int:
        return ((precision << 16) | (scale & 0x7FF)) + 4

    assert numeric_type(-1) == pa.string()
    assert numeric_type(typmod(38, 0)) == pa.decimal128(38, 0)
    assert numeric_type(typmod(39, 2)) == pa.string()
    assert numeric_type(typmod(5, -2)) == pa.string()  # negative scale (PG15+)
    assert numeric_type(typmod(3, 5)) == pa.string()  # scale above precision (PG15+)


def test_unknown_types_are_strings() -> None:
    column = RelationColumn(name="geo", type_oid=987654, type_modifier=-1, is_key=False)
    assert arrow_type(column) == pa.string()
    values = pa.array([b"POINT(1 2)", None], type=pa.binary())
    assert cast_column(column, values).to_pylist() == ["POINT(1 2)", None]


def test_cast_accepts_string_input_and_sliced_arrays() -> None:
    column = RelationColumn(name="b", type_oid=17, type_modifier=-1, is_key=False)
    values = pa.array(["junk", "\\x0102", None, "\\x"]).slice(1)
    assert cast_column(column, values).to_pylist() == [b"\x01\x02", None, b""]


def test_timestamp_ntz_writes_to_delta_and_reads_back(tmp_path: Path) -> None:
    column = RelationColumn(name="ts", type_oid=1114, type_modifier=-1, is_key=False)
    values = cast_column(
        column, pa.array([b"0001-01-01 00:00:00", b"9999-12-31 23:59:59.999999", None])
    )
    table = pa.table({"ts": values})
    write_deltalake(str(tmp_path / "t"), table)
    back = DeltaTable(str(tmp_path / "t"))
    assert back.schema().fields[0].type.type == "timestamp_ntz"
    assert back.to_pyarrow_table().column("ts").to_pylist() == values.to_pylist()
