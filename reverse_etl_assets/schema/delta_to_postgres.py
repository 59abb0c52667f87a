"""The type map: one table from Arrow (the lake's and a DataFrame's types) to Postgres.

It drives both the DDL (`PgColumn.ddl`) and the binary COPY encoding (`PgColumn.wire`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl
import pyarrow as pa

from reverse_etl_assets.errors import SpecError

# How a column travels on the wire: "plain" arrays go to the encoder as they are, "cast" ones are
# cast to `wire_type` first, "json" ones are serialized to JSON text and sent as jsonb.
Wire = Literal["plain", "cast", "json", "text"]


@dataclass(frozen=True, kw_only=True)
class PgColumn:
    """One column of a synced table: its name, its Postgres type and how it is encoded."""

    name: str
    ddl: str
    wire: Wire
    wire_type: pa.DataType | None = None
    nullable: bool = True


# Every Postgres table has these hidden columns; a column of the same name cannot be created.
# Names are compared exactly: quoted identifiers are case-sensitive, so "XMIN" is an ordinary
# column.
SYSTEM_COLUMNS = ("tableoid", "xmin", "cmin", "xmax", "cmax", "ctid")


def pg_columns(schema: pa.Schema, *, table: str) -> tuple[PgColumn, ...]:
    """Map every field of `schema`; an unsupported type or a system column name is a SpecError
    naming table and column."""
    for name in schema.names:
        if name in SYSTEM_COLUMNS:
            raise SpecError(
                f"synced table {table!r}: column {name!r} has the name of a Postgres system "
                f"column ({', '.join(SYSTEM_COLUMNS)}), which no table can have. Rename it in "
                "the source (or a view of it) and sync again"
            )
    return tuple(_pg_column(field, table) for field in schema)


def _pg_column(field: pa.Field, table: str) -> PgColumn:
    t = field.type
    name = field.name
    if pa.types.is_dictionary(t):
        return _pg_column(pa.field(name, t.value_type, field.nullable), table)
    mapped = _map_type(t)
    if mapped is None:
        raise SpecError(
            f"synced table {table!r}: column {name!r} has type {t} which has no Postgres mapping; "
            "supported: integers, boolean, float, double, decimal(p<=38,s), string, binary, date, "
            "timestamp, timestamp_ntz, interval and array/map/struct (as jsonb). Cast or drop the "
            "column in the source (or a view of it) and sync again"
        )
    ddl, wire, wire_type = mapped
    return PgColumn(name=name, ddl=ddl, wire=wire, wire_type=wire_type, nullable=field.nullable)


def _map_type(t: pa.DataType) -> tuple[str, Wire, pa.DataType | None] | None:
    if pa.types.is_int64(t):
        return "bigint", "plain", None
    if pa.types.is_int32(t):
        return "integer", "plain", None
    if pa.types.is_int16(t):
        return "smallint", "plain", None
    if pa.types.is_int8(t) or pa.types.is_uint8(t):
        return "smallint", "cast", pa.int16()
    if pa.types.is_uint16(t):
        return "integer", "cast", pa.int32()
    if pa.types.is_uint32(t):
        return "bigint", "cast", pa.int64()
    if pa.types.is_boolean(t):
        return "boolean", "plain", None
    if pa.types.is_float16(t):
        return "real", "cast", pa.float32()
    if pa.types.is_float32(t):
        return "real", "plain", None
    if pa.types.is_float64(t):
        return "double precision", "plain", None
    if pa.types.is_decimal128(t) or (pa.types.is_decimal(t) and t.precision <= 38):
        return f"numeric({t.precision},{t.scale})", "cast", pa.decimal128(t.precision, t.scale)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text", "text", None
    if (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    ):
        return "bytea", "cast", pa.large_binary()
    if pa.types.is_date(t):
        return "date", "cast", pa.date32()
    if pa.types.is_timestamp(t):
        ddl = "timestamptz" if t.tz is not None else "timestamp"
        return ddl, "cast", pa.timestamp("us", tz=t.tz)
    if pa.types.is_duration(t):
        return "interval", "cast", pa.duration("us")
    if pa.types.is_time(t):
        return "time", "cast", pa.time64("us")
    if pa.types.is_nested(t):
        return "jsonb", "json", None
    return None


def key_columns(columns: tuple[PgColumn, ...], key: tuple[str, ...]) -> tuple[PgColumn, ...]:
    """The key's columns, in key order."""
    by_name = {c.name: c for c in columns}
    return tuple(by_name[k] for k in key)


def to_wire(batch: pa.RecordBatch, columns: tuple[PgColumn, ...]) -> pa.RecordBatch:
    """Convert a batch to the arrays the binary encoder sends (casts, JSON text for nesting)."""
    arrays: list[pa.Array] = []
    for column, array in zip(columns, batch.columns, strict=True):
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        if column.wire == "cast" and array.type != column.wire_type:
            array = array.cast(column.wire_type)  # safe cast: refuses to lose precision
        elif column.wire == "json":
            array = json_text(array)
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=[c.name for c in columns])


def json_text(array: pa.Array) -> pa.Array:
    """Nested values as JSON text: ARRAY -> array, MAP -> object, STRUCT -> object with every
    field (nulls kept). Decimals become strings (exact), binary base64, NaN/Inf null (JSON has
    no such numbers); a NULL value stays NULL."""
    series = pl.Series("v", _jsonable(array))
    encoded = pl.DataFrame({"v": series}).select(
        pl.when(pl.col("v").is_null())
        .then(None)
        .otherwise(pl.struct(pl.col("v")).struct.json_encode().str.slice(5).str.head(-1))
    )
    return encoded.to_series().to_arrow().cast(pa.large_string())


def _jsonable(array: pa.Array) -> pa.Array:
    """Rewrite leaves polars cannot serialize to JSON (binary -> base64 text), recursively."""
    t = array.type
    if isinstance(array, pa.ChunkedArray):
        return pa.chunked_array([_jsonable(c) for c in array.chunks], type=None)
    if pa.types.is_struct(t):
        children = [_jsonable(array.field(i)) for i in range(t.num_fields)]
        return pa.StructArray.from_arrays(
            children,
            fields=[pa.field(t.field(i).name, c.type) for i, c in enumerate(children)],
            mask=array.is_null(),
        )
    if (pa.types.is_map(t) or pa.types.is_list(t) or pa.types.is_large_list(t)) and array.offset:
        # Rebuilding from offsets refuses a slice with nulls (a batch cut from a larger table):
        # copy it to offset 0 first.
        array = pa.concat_arrays([array])
    if pa.types.is_map(t):
        keys, items = _key_text(array.keys), _jsonable(array.items)
        if keys.type == t.key_type and items.type == t.item_type:
            return array
        return pa.MapArray.from_arrays(array.offsets, keys, items, mask=array.is_null())
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        if pa.types.is_fixed_size_list(t):
            array = array.cast(pa.list_(t.value_type))
        values = _jsonable(array.values)
        cls = pa.LargeListArray if pa.types.is_large_list(array.type) else pa.ListArray
        return cls.from_arrays(array.offsets, values, mask=array.is_null())
    if (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    ):
        return pl.Series(array.cast(pa.large_binary())).bin.encode("base64").to_arrow()
    return array


def _key_text(keys: pa.Array) -> pa.Array:
    """MAP keys as JSON object keys, which are strings: a non-string key becomes the text of its
    JSON value (1 -> "1", true -> "true", a date -> "2024-01-31", binary -> base64), a nested
    key its JSON text."""
    t = keys.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return keys
    text = json_text(keys)
    if pa.types.is_nested(t):
        return text
    # A scalar's JSON is a number, true/false, or a quoted string without escapes (dates,
    # timestamps, decimals, base64): drop the quotes.
    found = pl.Series(text).str.strip_prefix('"').str.strip_suffix('"')
    if pa.types.is_floating(t):
        # NaN and the infinities, JSON null as values, are keys of their own: as "null" they
        # would be one key, and jsonb keeps only the last of equal keys.
        value = pl.Series(keys.cast(pa.float64()))
        found = (
            pl.DataFrame({"v": value, "text": found})
            .select(
                pl.when(pl.col("v").is_nan())
                .then(pl.lit("NaN"))
                .when(pl.col("v") == float("inf"))
                .then(pl.lit("Infinity"))
                .when(pl.col("v") == float("-inf"))
                .then(pl.lit("-Infinity"))
                .otherwise(pl.col("text"))
            )
            .to_series()
        )
    return found.to_arrow()
