"""A seeded random campaign over every Delta type the type map accepts (Delta -> Postgres).

Delta tables with CDF on get columns of every mapped type, edge values (NaN, ±Inf, -0.0, decimal
extremes, years 1 and 9999, microsecond edges, unicode, NUL bytes, empty strings and bytes,
nested nulls, JSON keys needing escapes), keys of several types and partition columns; random
operations (appends, updates of values and keys, deletes, MERGE, overwrite, columns added later)
then run, and after every sync each Postgres row and column is compared with the Delta table under
the documented mapping (README "Types"), and `verify` must say equal.

The expected Postgres values are computed here from the Delta rows, independently of the
product's own conversion code.
"""

from __future__ import annotations

import base64
import math
import random
import struct as pystruct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from psycopg import sql

Gen = Callable[[random.Random], Any]

HOSTILE = [
    "",
    " ",
    "a b",
    "'",
    '"',
    "\\",
    "\\u0000",
    "%s",
    "{}",
    "é",
    "€",
    "😀",
    "\t",
    "\n",
    "\u2028",
    "\x01",
    "x" * 3,
    "ß",
    "Ω",
    'a"b\\c',
]


def _text(rng: random.Random, *, nul: bool) -> str:
    pick = rng.random()
    if pick < 0.1:
        return ""
    if pick < 0.15:
        return rng.choice("xyé") * rng.randrange(3000, 9000)
    if nul and pick < 0.25:
        return f"n\x00{rng.randrange(100)}\x00"
    return "".join(rng.choice(HOSTILE) for _ in range(rng.randrange(1, 5)))


def _f32(x: float) -> float:
    return float(pystruct.unpack("<f", pystruct.pack("<f", x))[0])


FLOATS = [
    0.0,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
    1.5,
    -2.25,
    1e-300,
    5e-324,
    1.7976931348623157e308,
]
FLOATS32 = [0.0, -0.0, math.nan, math.inf, -math.inf, 0.1, 3.4028234663852886e38, 1e-45, -7.5]


def _float(rng: random.Random) -> float:
    return rng.choice(FLOATS) if rng.random() < 0.5 else rng.uniform(-1e9, 1e9)


def _float32(rng: random.Random) -> float:
    return _f32(rng.choice(FLOATS32) if rng.random() < 0.5 else rng.uniform(-1e6, 1e6))


def _decimal(precision: int, scale: int) -> Gen:
    top = 10**precision - 1

    def gen(rng: random.Random) -> Decimal:
        pick = rng.random()
        if pick < 0.15:
            unscaled = rng.choice([top, -top])
        elif pick < 0.25:
            unscaled = rng.choice([0, 1, -1])
        else:
            unscaled = rng.randrange(-top, top + 1) // 10 ** rng.randrange(precision)
        return Decimal(f"{unscaled}E-{scale}")

    return gen


def _date(rng: random.Random) -> date:
    pick = rng.random()
    if pick < 0.2:
        return rng.choice(
            [
                date(1, 1, 1),
                date(9999, 12, 31),
                date(1970, 1, 1),
                date(2000, 1, 1),
                date(1999, 12, 31),
                date(1969, 12, 31),
            ]
        )
    return date(1, 1, 1) + timedelta(days=rng.randrange(3_652_058))


def _datetime(rng: random.Random, tz: Any) -> datetime:
    pick = rng.random()
    if pick < 0.25:
        value = rng.choice(
            [
                datetime(1, 1, 1),
                datetime(1, 1, 1, 0, 0, 0, 1),
                datetime(9999, 12, 31, 23, 59, 59, 999999),
                datetime(1970, 1, 1),
                datetime(1969, 12, 31, 23, 59, 59, 999999),
                datetime(2000, 1, 1),
                datetime(1999, 12, 31, 23, 59, 59, 999999),
                datetime(2000, 1, 1, 0, 0, 0, 1),
            ]
        )
    else:
        value = datetime(1, 1, 1) + timedelta(microseconds=rng.randrange(315_537_897_600_000_000))
    return value.replace(tzinfo=tz)


INT_EDGES = {8: 127, 16: 32767, 32: 2**31 - 1, 64: 2**63 - 1}


def _int(bits: int) -> Gen:
    top = INT_EDGES[bits]

    def gen(rng: random.Random) -> int:
        if rng.random() < 0.3:
            return rng.choice([0, -1, 1, top, -top - 1])
        return rng.randrange(-top - 1, top + 1)

    return gen


@dataclass(frozen=True)
class Kind:
    """A column type and a generator of its values (NULLs are added by the caller)."""

    type: pa.DataType
    gen: Gen


def kinds(nul: bool) -> dict[str, Kind]:
    """Every kind of column the campaign writes, by name (NUL bytes in text when `nul`)."""
    text = Kind(pa.string(), lambda r: _text(r, nul=nul))
    inner_struct = pa.struct([("x", pa.int64()), ("y", pa.string())])
    nested = pa.struct(
        [
            ("d", pa.decimal128(38, 18)),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("ntz", pa.timestamp("us")),
            ("dt", pa.date32()),
            ("bin", pa.binary()),
            ("s", pa.string()),
            ("f", pa.float32()),
            ("g", pa.float64()),
            ("l", pa.list_(pa.decimal128(10, 3))),
            ("n", inner_struct),
            ('a"b\\c é', pa.int32()),
        ]
    )

    def maybe(rng: random.Random, gen: Gen) -> Any:
        return None if rng.random() < 0.15 else gen(rng)

    def nested_value(rng: random.Random) -> dict[str, Any]:
        return {
            "d": maybe(rng, _decimal(38, 18)),
            "ts": maybe(rng, lambda r: _datetime(r, UTC)),
            "ntz": maybe(rng, lambda r: _datetime(r, None)),
            "dt": maybe(rng, _date),
            "bin": maybe(rng, lambda r: r.randbytes(r.randrange(5))),
            "s": maybe(rng, lambda r: _text(r, nul=nul)),
            "f": maybe(rng, _float32),
            "g": maybe(rng, _float),
            "l": maybe(rng, lambda r: [maybe(r, _decimal(10, 3)) for _ in range(r.randrange(3))]),
            "n": maybe(
                rng, lambda r: {"x": maybe(r, _int(64)), "y": maybe(r, lambda q: _text(q, nul=nul))}
            ),
            'a"b\\c é': maybe(rng, _int(32)),
        }

    def str_map(rng: random.Random) -> list[tuple[str, Any]]:
        keys = rng.sample(HOSTILE, rng.randrange(4))
        if nul and rng.random() < 0.2:
            keys.append("k\x00")
        return [(k, maybe(rng, _float32)) for k in keys]

    def int_map(rng: random.Random) -> list[tuple[int, Any]]:
        keys = {_int(32)(rng) for _ in range(rng.randrange(4))}
        return [(k, maybe(rng, lambda r: _text(r, nul=nul))) for k in sorted(keys)]

    return {
        "bool": Kind(pa.bool_(), lambda r: r.random() < 0.5),
        "byte": Kind(pa.int8(), _int(8)),
        "short": Kind(pa.int16(), _int(16)),
        "int": Kind(pa.int32(), _int(32)),
        "long": Kind(pa.int64(), _int(64)),
        "float": Kind(pa.float32(), _float32),
        "double": Kind(pa.float64(), _float),
        "dec_5_2": Kind(pa.decimal128(5, 2), _decimal(5, 2)),
        "dec_18_0": Kind(pa.decimal128(18, 0), _decimal(18, 0)),
        "dec_18_18": Kind(pa.decimal128(18, 18), _decimal(18, 18)),
        "dec_19_4": Kind(pa.decimal128(19, 4), _decimal(19, 4)),
        "dec_38_0": Kind(pa.decimal128(38, 0), _decimal(38, 0)),
        "dec_38_18": Kind(pa.decimal128(38, 18), _decimal(38, 18)),
        "dec_38_38": Kind(pa.decimal128(38, 38), _decimal(38, 38)),
        "string": text,
        "binary": Kind(
            pa.binary(),
            lambda r: (
                r.choice([b"", b"\x00", b"\x00\xff"])
                if r.random() < 0.3
                else r.randbytes(r.randrange(20))
            ),
        ),
        "date": Kind(pa.date32(), _date),
        "timestamp": Kind(pa.timestamp("us", tz="UTC"), lambda r: _datetime(r, UTC)),
        "timestamp_ntz": Kind(pa.timestamp("us"), lambda r: _datetime(r, None)),
        "array_long": Kind(
            pa.list_(pa.int64()), lambda r: [maybe(r, _int(64)) for _ in range(r.randrange(4))]
        ),
        "array_double": Kind(
            pa.list_(pa.float64()), lambda r: [maybe(r, _float) for _ in range(r.randrange(4))]
        ),
        "array_string": Kind(
            pa.list_(pa.string()),
            lambda r: [maybe(r, lambda q: _text(q, nul=nul)) for _ in range(r.randrange(3))],
        ),
        "map_string_float": Kind(pa.map_(pa.string(), pa.float32()), str_map),
        "map_int_string": Kind(pa.map_(pa.int32(), pa.string()), int_map),
        "struct": Kind(nested, nested_value),
        "array_struct": Kind(
            pa.list_(inner_struct),
            lambda r: [
                maybe(
                    r,
                    lambda q: {"x": maybe(q, _int(64)), "y": maybe(q, lambda p: _text(p, nul=nul))},
                )
                for _ in range(r.randrange(3))
            ],
        ),
    }


def _hostile_key(rng: random.Random, n: int) -> str:
    return rng.choice(HOSTILE) + f"{n}" + rng.choice(HOSTILE)


# Key shapes: name -> (key columns and their types, a function from a unique number to values).
KEY_SHAPES: dict[
    str, tuple[list[tuple[str, pa.DataType]], Callable[[random.Random, int], tuple[Any, ...]]]
] = {
    "long": ([("k", pa.int64())], lambda r, n: (n * 7919 - 2**62,)),
    "int": ([("k", pa.int32())], lambda r, n: (n * 31 - 2**30,)),
    "string": ([("k", pa.string())], lambda r, n: (_hostile_key(r, n),)),
    "composite": (
        [("k1", pa.string()), ("k2", pa.int16()), ("k3", pa.date32())],
        lambda r, n: (_hostile_key(r, n // 3), n % 3 - 1, date(1, 1, 1) + timedelta(days=n)),
    ),
    "decimal": (
        [("k", pa.decimal128(38, 10))],
        lambda r, n: (Decimal(f"{(n * 104729 - 10**9) * (-1) ** n}E-10"),),
    ),
    "date": ([("k", pa.date32())], lambda r, n: (date(1, 1, 1) + timedelta(days=n * 37),)),
    "timestamp": (
        [("k", pa.timestamp("us", tz="UTC"))],
        lambda r, n: (datetime(1, 1, 1, tzinfo=UTC) + timedelta(microseconds=n * 10**13 + n),),
    ),
    "binary": ([("k", pa.binary())], lambda r, n: (n.to_bytes(4, "big") + b"\x00",)),
}


# -- the documented mapping (README "Types") ---------------------------------------------------


def _json_leaf(value: Any, t: pa.DataType) -> Any:
    """What a nested value must be inside jsonb, as Python's json module reads it."""
    if value is None:
        return None
    if pa.types.is_struct(t):
        return {
            t.field(i).name: _json_leaf(value.get(t.field(i).name), t.field(i).type)
            for i in range(t.num_fields)
        }
    if pa.types.is_map(t):
        return {_json_key(k, t.key_type): _json_leaf(v, t.item_type) for k, v in value}
    if pa.types.is_list(t):
        return [_json_leaf(v, t.value_type) for v in value]
    if pa.types.is_floating(t):
        return None if math.isnan(value) or math.isinf(value) else ("float", value, t)
    if pa.types.is_decimal(t):
        return f"{value:f}"
    if pa.types.is_binary(t):
        return base64.b64encode(value).decode()
    if pa.types.is_timestamp(t):
        return ("timestamp", value)
    if pa.types.is_date(t):
        return value.isoformat()
    return value


def _json_key(key: Any, t: pa.DataType) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(_json_leaf(key, t))


def json_equal(want: Any, got: Any) -> bool:
    """Whether `got` (jsonb read back) holds `want` (from `_json_leaf`)."""
    if isinstance(want, tuple) and want[0] == "float":
        _, value, t = want
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return False
        return (_f32(got) == value) if t == pa.float32() else (float(got) == value)
    if isinstance(want, tuple) and want[0] == "timestamp":
        if not isinstance(got, str):
            return False
        parsed = datetime.fromisoformat(got)
        return parsed == want[1] and (parsed.tzinfo is None) == (want[1].tzinfo is None)
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and want.keys() == got.keys()
            and all(json_equal(want[k], got[k]) for k in want)
        )
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(want) == len(got)
            and all(json_equal(w, g) for w, g in zip(want, got, strict=True))
        )
    return type(want) is type(got) and want == got


def strip_nul(value: Any) -> Any:
    """`on_invalid_characters: strip`: NUL bytes removed from every string, JSON keys too."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {strip_nul(k): strip_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_nul(v) for v in value]
    if isinstance(value, tuple) and value and value[0] in ("float", "timestamp"):
        return value
    if isinstance(value, tuple):
        return tuple(strip_nul(v) for v in value)
    return value


def expected_value(value: Any, t: pa.DataType) -> Any:
    """The Postgres value (as psycopg returns it) a Delta value must land as."""
    if value is None:
        return None
    if pa.types.is_nested(t):
        return ("json", _json_leaf(value, t))
    return value


def value_equal(want: Any, got: Any, t: pa.DataType) -> bool:
    if want is None or got is None:
        return want is None and got is None
    if isinstance(want, tuple) and want[0] == "json":
        return json_equal(want[1], got)
    if pa.types.is_floating(t):
        if math.isnan(want):
            return isinstance(got, float) and math.isnan(got)
        # A float changed from 0.0 to -0.0 is not written (README): zeros compare alike.
        return (_f32(got) if t == pa.float32() else got) == want
    if pa.types.is_decimal(t):
        return isinstance(got, Decimal) and got == want and got.as_tuple().exponent == -t.scale
    if pa.types.is_binary(t):
        return bytes(got) == want
    if pa.types.is_timestamp(t):
        return got == want and (got.tzinfo is None) == (t.tz is None)
    return type(got) is type(want) and got == want


# -- reading both sides ------------------------------------------------------------------------


def delta_rows(path: Path) -> tuple[pa.Schema, list[dict[str, Any]]]:
    data = DeltaTable(str(path)).to_pyarrow_table()
    return data.schema, data.to_pylist()


def postgres_rows(dsn: str, schema: str, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TIME ZONE 'UTC'")  # psycopg cannot read year 9999 shifted past 10000
        cursor = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, table)))
        names = [d.name for d in cursor.description or ()]
        return names, cursor.fetchall()


def write(path: Path, data: pa.Table, **kwargs: Any) -> None:
    write_deltalake(str(path), data, **kwargs)
