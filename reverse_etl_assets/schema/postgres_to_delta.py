"""The Postgres → Arrow/Delta type map, and column-wise casts of Postgres text forms into it.

Rule for values Delta cannot hold (±infinity, BC or 5-digit-year dates, numeric NaN/±Infinity in a
decimal column, multi-dimensional arrays): raise `UnrepresentableValue`, never store a wrong value.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from datetime import date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from reverse_etl_assets.errors import DataError
from reverse_etl_assets.postgres.replication.messages import RelationColumn

NUMERIC_OID = 1700
# Delta's decimal holds at most 38 digits; wider or unconstrained numerics stay exact text.
MAX_DECIMAL_PRECISION = 38

# Built-in scalar types with a typed Arrow counterpart; every other type becomes its text form.
SCALAR_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),  # bool
    21: pa.int16(),  # int2
    23: pa.int32(),  # int4
    20: pa.int64(),  # int8
    700: pa.float32(),  # float4
    701: pa.float64(),  # float8
    17: pa.binary(),  # bytea
    1082: pa.date32(),  # date
    1114: pa.timestamp("us"),  # timestamp -> Delta timestamp_ntz
    1184: pa.timestamp("us", "UTC"),  # timestamptz -> Delta timestamp
}

# Array type -> element type, for built-in element types whose array text form uses ',' and
# whose elements map as above (text-like elements map to string).
ARRAY_ELEMENTS: dict[int, int] = {
    1000: 16,  # bool[]
    1005: 21,  # int2[]
    1007: 23,  # int4[]
    1016: 20,  # int8[]
    1021: 700,  # float4[]
    1022: 701,  # float8[]
    1231: NUMERIC_OID,  # numeric[]
    1001: 17,  # bytea[]
    1182: 1082,  # date[]
    1115: 1114,  # timestamp[]
    1185: 1184,  # timestamptz[]
    1009: 25,  # text[]
    1015: 1043,  # varchar[]
    1014: 1042,  # bpchar[]
    1003: 19,  # name[]
    2951: 2950,  # uuid[]
    199: 114,  # json[]
    3807: 3802,  # jsonb[]
    1041: 869,  # inet[]
    651: 650,  # cidr[]
    1040: 829,  # macaddr[]
    1183: 1083,  # time[]
    1270: 1266,  # timetz[]
    1187: 1186,  # interval[]
}

_FIX = "change or remove the value in Postgres, then run the sync again"
_DATE = r"\d{4}-\d{2}-\d{2}"
_TIME = r"\d{2}:\d{2}:\d{2}(\.\d{1,6})?"
# Text forms the casts accept; anything else is a value Delta cannot hold (or a foreign format).
_DATE_FORM = f"^{_DATE}$"
_TIMESTAMP_FORM = f"^{_DATE} {_TIME}$"
_TIMESTAMPTZ_FORM = f"^{_DATE} {_TIME}[+-]\\d{{2}}(:\\d{{2}})?$"
_DECIMAL_FORM = r"^-?\d+(\.\d+)?$"
_ARRAY_ELEMENT = re.compile(r'"((?:[^"\\]|\\.)*)"|([^,"{}]*)', re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


class UnrepresentableValue(DataError):
    """A value Delta cannot hold as the column's type; the message says what to do."""

    def __init__(self, *, column: str, value: str, reason: str) -> None:
        super().__init__(
            f"column {column}: value {value!r} cannot be stored in Delta: {reason}; {_FIX}"
        )
        self.column = column
        self.value = value
        self.reason = reason


def arrow_type(column: RelationColumn) -> pa.DataType:
    """The Arrow type a Postgres column lands as in Delta (by type OID and typmod)."""
    element = ARRAY_ELEMENTS.get(column.type_oid)
    if element is not None:
        return pa.list_(_scalar_type(element, column.type_modifier))
    return _scalar_type(column.type_oid, column.type_modifier)


def arrow_schema(columns: Sequence[RelationColumn]) -> pa.Schema:
    """The Arrow schema of a table's columns, in order, all nullable."""
    return pa.schema([pa.field(c.name, arrow_type(c)) for c in columns])


def numeric_type(type_modifier: int) -> pa.DataType:
    """decimal128(p, s) for numeric(p, s) that Delta can hold, else string (exact text)."""
    if type_modifier < 4:  # -1: no typmod (unconstrained numeric)
        return pa.string()
    packed = type_modifier - 4
    precision = (packed >> 16) & 0xFFFF
    scale = packed & 0x7FF
    if scale & 0x400:  # PostgreSQL 15+ allows negative scale, stored as 11-bit two's complement
        scale -= 0x800
    if not 1 <= precision <= MAX_DECIMAL_PRECISION or not 0 <= scale <= precision:
        return pa.string()
    return pa.decimal128(precision, scale)


def cast_column(column: RelationColumn, values: pa.Array) -> pa.Array:
    """Cast a column's text forms (binary or string; null = SQL NULL) to its Arrow type."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    target = arrow_type(column)
    if pa.types.is_list(target):
        return _cast_array_values(column, values, target.value_type)
    return _cast_scalars(column, values, target)


def _scalar_type(type_oid: int, type_modifier: int) -> pa.DataType:
    """The Arrow type of a non-array Postgres type."""
    if type_oid == NUMERIC_OID:
        return numeric_type(type_modifier)
    return SCALAR_TYPES.get(type_oid, pa.string())


def _cast_scalars(column: RelationColumn, values: pa.Array, target: pa.DataType) -> pa.Array:
    """Cast text forms to a scalar Arrow type, column-wise."""
    if pa.types.is_binary(target):
        return _decode_bytea(column, _as_binary(values))
    text = _as_text(column, values)
    if pa.types.is_string(target):
        return text
    if pa.types.is_boolean(target):
        return pc.equal(text, "t")
    try:
        cast = pc.cast(text, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        # The error path only: name the value and why Delta cannot hold it.
        pattern = _form_of(target)
        if pattern is not None:
            _require_form(column, text, pattern)
        bad = _first_failing(text, target)
        raise UnrepresentableValue(
            column=column.name,
            value=bad if bad is not None else "?",
            reason=f"it does not convert to {target} ({exc})",
        ) from exc
    if pa.types.is_date(target) or pa.types.is_timestamp(target):
        _require_delta_years(column, text, cast)
    return cast


# Years 1 to 9999 as days (date32) and as microseconds since the epoch (timestamps).
_DELTA_BOUNDS = {
    True: (
        (date(1, 1, 1) - date(1970, 1, 1)).days,
        (date(9999, 12, 31) - date(1970, 1, 1)).days,
    ),
    False: (
        (datetime(1, 1, 1) - datetime(1970, 1, 1)) // timedelta(microseconds=1),
        (datetime(9999, 12, 31, 23, 59, 59, 999999) - datetime(1970, 1, 1))
        // timedelta(microseconds=1),
    ),
}


def _form_of(target: pa.DataType) -> str | None:
    """The text form a decimal, date or timestamp of Postgres takes under the session settings."""
    if pa.types.is_decimal(target):
        return _DECIMAL_FORM
    if pa.types.is_date(target):
        return _DATE_FORM
    if pa.types.is_timestamp(target):
        return _TIMESTAMPTZ_FORM if target.tz else _TIMESTAMP_FORM
    return None


def _require_delta_years(column: RelationColumn, text: pa.Array, cast: pa.Array) -> None:
    """Delta holds years 1 to 9999: a cast value outside them (year 10000 and later parse
    fine in Arrow) is an UnrepresentableValue. Two vectorised bounds checks on the common path."""
    if len(cast) == 0 or cast.null_count == len(cast):
        return
    as_int = cast.cast(pa.int32() if pa.types.is_date(cast.type) else pa.int64())
    lower, upper = _DELTA_BOUNDS[pa.types.is_date(cast.type)]
    extremes = pc.min_max(as_int)
    if lower <= extremes["min"].as_py() and extremes["max"].as_py() <= upper:
        return
    inside = pc.and_(pc.greater_equal(as_int, lower), pc.less_equal(as_int, upper))
    value = text[pc.index(inside, False).as_py()].as_py()
    raise UnrepresentableValue(
        column=column.name, value=value, reason=_why_unrepresentable(value, decimal=False)
    )


def _as_binary(values: pa.Array) -> pa.Array:
    """The values as a `binary` array (string and large variants are reinterpreted)."""
    if values.type == pa.binary():
        return values
    return pc.cast(values, pa.binary())


def _as_text(column: RelationColumn, values: pa.Array) -> pa.Array:
    """The values as a UTF-8 `string` array (validated)."""
    if values.type == pa.string():
        return values
    try:
        return pc.cast(values, pa.string())
    except pa.ArrowInvalid as exc:
        raise DataError(
            f"column {column.name}: a value is not valid UTF-8 ({exc}); the source database "
            "must use the UTF8 encoding for lakehouse syncs"
        ) from exc


def _require_form(column: RelationColumn, text: pa.Array, pattern: str) -> None:
    """Raise UnrepresentableValue for the first non-null value not matching `pattern`."""
    matches = pc.match_substring_regex(text, pattern)
    if pc.all(matches).as_py() is not False:  # True, or None when every value is null
        return
    index = pc.index(matches, False).as_py()
    value = text[index].as_py()
    raise UnrepresentableValue(
        column=column.name,
        value=value,
        reason=_why_unrepresentable(value, decimal=pattern == _DECIMAL_FORM),
    )


def _why_unrepresentable(value: str, *, decimal: bool) -> str:
    """Why a temporal or decimal text form has no Delta counterpart."""
    lowered = value.lower()
    if lowered in ("nan", "infinity", "-infinity") and decimal:
        return "a Delta decimal has no NaN or infinity"
    if lowered in ("infinity", "-infinity"):
        return "Delta has no infinite dates or timestamps"
    if lowered.endswith(" bc"):
        return "Delta holds years 1 to 9999 only, this is before year 1 (BC)"
    if re.match(r"^\d{5,}-", value):
        return "Delta holds years 1 to 9999 only, this is after 9999"
    return "its text form is not one the cast understands (check the session settings)"


def _first_failing(text: pa.Array, target: pa.DataType) -> str | None:
    """The first value that fails to cast (only on the error path, so Python per value is fine)."""
    for value in text.to_pylist():
        if value is None:
            continue
        try:
            pc.cast(pa.array([value]), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return str(value)
    return None


def _decode_bytea(column: RelationColumn, values: pa.Array) -> pa.Array:
    """Decode bytea hex forms (`\\x0a0b`) with one unhexlify over the whole column."""
    prefixed = pc.starts_with(values, pattern="\\x")
    if pc.all(prefixed).as_py() is False:
        bad = values[pc.index(prefixed, False).as_py()].as_py()
        raise UnrepresentableValue(
            column=column.name,
            value=bytes(bad[:40]).decode(errors="replace"),
            reason="bytea text is not in hex form (the session sets bytea_output=hex)",
        )
    # Nulls become empty hex first: slicing a null's (empty) slot past its end fails.
    filled = pc.fill_null(values, pa.scalar(b"\\x", pa.binary())) if values.null_count else values
    # An explicit stop: pyarrow 26 fails ("Negative buffer resize") when stop is left out.
    longest = pc.max(pc.binary_length(filled)).as_py() or 2
    hex_digits = pc.binary_slice(filled, 2, longest)
    odd = pc.bit_wise_and(pc.binary_length(hex_digits), 1)
    # Kernels write fresh, compact output: offsets start at 0 and the data buffer is contiguous.
    hex_digits = pa.concat_arrays([hex_digits])
    count = len(hex_digits)
    offsets_buffer, data_buffer = hex_digits.buffers()[1], hex_digits.buffers()[2]
    offsets = pa.Array.from_buffers(
        pa.int32(), count + 1, [None, offsets_buffer], offset=hex_digits.offset
    )
    start, end = offsets[0].as_py(), offsets[count].as_py()
    try:
        if pc.max(odd).as_py():
            raise binascii.Error("odd number of hex digits")
        raw = binascii.unhexlify(memoryview(data_buffer)[start:end] if data_buffer else b"")
    except binascii.Error as exc:
        raise UnrepresentableValue(
            column=column.name, value="(bytea)", reason=f"bytea hex form is malformed ({exc})"
        ) from exc
    new_offsets = pc.cast(pc.divide(pc.subtract(offsets, start), 2), pa.int32())
    decoded = pa.Array.from_buffers(
        pa.binary(), count, [None, new_offsets.buffers()[1], pa.py_buffer(raw)]
    )
    if values.null_count:
        decoded = pc.if_else(pc.is_valid(values), decoded, pa.scalar(None, pa.binary()))
    return decoded


def _cast_array_values(
    column: RelationColumn, values: pa.Array, element_type: pa.DataType
) -> pa.Array:
    """Parse one-dimensional `{…}` text forms into a list array; elements cast column-wise."""
    text = _as_text(column, values)
    offsets = [0]
    elements: list[str | None] = []
    for value in text.to_pylist():
        if value is not None:
            elements.extend(_parse_array(column, value))
        offsets.append(len(elements))
    element_column = RelationColumn(
        name=column.name,
        type_oid=ARRAY_ELEMENTS[column.type_oid],
        type_modifier=column.type_modifier,
        is_key=False,
    )
    cast = _cast_scalars(element_column, pa.array(elements, type=pa.string()), element_type)
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), cast, mask=pc.is_null(text))


def _parse_array(column: RelationColumn, text: str) -> list[str | None]:
    """Elements of a one-dimensional array's text form (quoted, escaped, NULL)."""
    if not text.startswith("{") or not text.endswith("}"):
        raise UnrepresentableValue(
            column=column.name,
            value=text,
            reason="arrays with explicit bounds ([n:m]={…}) would lose their bounds",
        )
    body = text[1:-1]
    if not body:
        return []
    if body.startswith("{"):
        raise UnrepresentableValue(
            column=column.name, value=text, reason="multi-dimensional arrays are not supported"
        )
    elements: list[str | None] = []
    pos, size = 0, len(body)
    while True:
        match = _ARRAY_ELEMENT.match(body, pos)
        if match is None or (match.end() == pos and match.group(1) is None):
            raise UnrepresentableValue(
                column=column.name, value=text, reason="array text form not understood"
            )
        quoted, bare = match.group(1), match.group(2)
        if quoted is not None:
            elements.append(_ESCAPE.sub(r"\1", quoted) if "\\" in quoted else quoted)
        else:
            elements.append(None if bare.upper() == "NULL" else bare)
        pos = match.end()
        if pos == size:
            return elements
        if body[pos] != ",":
            raise UnrepresentableValue(
                column=column.name, value=text, reason="array text form not understood"
            )
        pos += 1
