"""Arrow scalars as Delta (DataFusion) SQL expressions of the same type and value, for the
clauses of a MERGE that set a constant (no source row to read it from)."""

from __future__ import annotations

import pyarrow as pa

_INTEGERS = {
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INT",
    pa.int64(): "BIGINT",
}
_FLOATS = {pa.float32(): "REAL", pa.float64(): "DOUBLE"}


def literal(value: pa.Scalar) -> str | None:
    """`value` as an expression of its exact type and value; None for a type not written here
    (lists, structs, maps, other timestamp units), which the caller handles some other way."""
    t = value.type
    if not value.is_valid:
        return "NULL"
    if pa.types.is_boolean(t):
        return "TRUE" if value.as_py() else "FALSE"
    if t in _INTEGERS:
        return f"CAST({value.as_py()} AS {_INTEGERS[t]})"
    if t in _FLOATS:
        # repr gives back the same double ('nan', 'inf', '-0.0', '1e+300'), and so the same float
        return f"CAST('{value.as_py()!r}' AS {_FLOATS[t]})"
    if pa.types.is_decimal128(t):
        return f"CAST('{value.as_py():f}' AS DECIMAL({t.precision}, {t.scale}))"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "'" + value.as_py().replace("'", "''") + "'"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return f"X'{value.as_py().hex()}'"
    if pa.types.is_date32(t):
        return f"CAST('{value.as_py().isoformat()}' AS DATE)"
    if pa.types.is_timestamp(t) and t.unit == "us" and t.tz in (None, "UTC"):
        # from its microseconds: a TIMESTAMP literal is nanoseconds, which cannot hold year 1
        return f"to_timestamp_micros(CAST({value.cast(pa.int64()).as_py()} AS BIGINT))"
    return None
