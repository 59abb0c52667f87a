"""PostgreSQL's own extended hash functions, recomputed over Arrow arrays with numpy.

`row_hashes` gives, for each row of a wire batch, the value Postgres returns for
`postgres.fingerprint.row_hash` over the same row (each column's own hash function, seeded by its
position, XORed and mixed once more), and `key_hashes` the value of `hash_record_extended` over
the key columns, so a Delta table and its synced table can be compared by hashing each where it
lives.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from reverse_etl_assets.schema.delta_to_postgres import PgColumn

U32 = np.uint32
U64 = np.uint64
# hash_bytes_extended / hash_bytes_uint32_extended start from this (plus the key length).
_GOLDEN = 0x9E3779B9 + 3923095
# Microseconds and days between the Unix epoch and Postgres's (2000-01-01).
_PG_EPOCH_US = 946_684_800_000_000
_PG_EPOCH_DAYS = 10_957
_FLOAT8_NAN = np.frombuffer(np.float64(np.nan).tobytes(), dtype=U64)[0]
_NUMERIC = re.compile(r"numeric\((\d+),(\d+)\)")
# Largest precision whose unscaled value always fits a bigint.
_SCALED_PRECISION = 18

HashForm = Literal["value", "text", "scaled"]


def hash_form(column: PgColumn) -> HashForm:
    """How a column enters the row hash, the same on both sides: `value` hashes it with its
    type's own function; `text` hashes its text (jsonb, whose own hash walks its tokens, and wide
    numerics, whose own hash ignores the sign); `scaled` hashes a numeric(p<=18,s) as the bigint
    value * 10^s (exact, and far cheaper to recompute than its text)."""
    if column.ddl == "jsonb":
        return "text"
    numeric = _NUMERIC.fullmatch(column.ddl)
    if numeric:
        return "scaled" if int(numeric[1]) <= _SCALED_PRECISION else "text"
    return "value"


def numeric_scale(column: PgColumn) -> int:
    """The scale s of a numeric(p,s) column."""
    numeric = _NUMERIC.fullmatch(column.ddl)
    if numeric is None:
        raise ValueError(f"{column.name} is {column.ddl}, not numeric(p,s)")
    return int(numeric[2])


def _rot(x: np.ndarray, k: int) -> np.ndarray:
    return (x << U32(k)) | (x >> U32(32 - k))


def _mix(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """Bob Jenkins' lookup3 mix, in place (uint32 arithmetic wraps, as in C)."""
    a -= c
    a ^= _rot(c, 4)
    c += b
    b -= a
    b ^= _rot(a, 6)
    a += c
    c -= b
    c ^= _rot(b, 8)
    b += a
    a -= c
    a ^= _rot(c, 16)
    c += b
    b -= a
    b ^= _rot(a, 19)
    a += c
    c -= b
    c ^= _rot(b, 4)
    b += a


def _final(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """lookup3's final mix, in place; the 64-bit result Postgres reports: b high, c low."""
    c ^= b
    c -= _rot(b, 14)
    a ^= c
    a -= _rot(c, 11)
    b ^= a
    b -= _rot(a, 25)
    c ^= b
    c -= _rot(b, 16)
    a ^= c
    a -= _rot(c, 4)
    b ^= a
    b -= _rot(a, 14)
    c ^= b
    c -= _rot(b, 24)
    return (b.astype(U64) << U64(32)) | c.astype(U64)


def _seeded(a: np.ndarray, b: np.ndarray, c: np.ndarray, seed: int) -> None:
    """A non-zero seed perturbs lookup3's starting state, as if it were padding after the key."""
    if seed:
        a += U32((seed >> 32) & 0xFFFFFFFF)
        b += U32(seed & 0xFFFFFFFF)
        _mix(a, b, c)


def _start(n: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The state a fixed-length key of `length` bytes starts from, for `n` values."""
    a, b, c = (np.full(1, (_GOLDEN + length) & 0xFFFFFFFF, dtype=U32) for _ in range(3))
    _seeded(a, b, c, seed)
    return np.full(n, a[0], dtype=U32), np.full(n, b[0], dtype=U32), np.full(n, c[0], dtype=U32)


def hash_uint32(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """hash_uint32_extended(value, seed) of each 32-bit value."""
    a, b, c = _start(len(values), 4, seed)
    a += values.astype(U32, copy=False)
    return _final(a, b, c)


def hash_int8(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """hashint8extended(value, seed): the low half folded with the high half (or its complement
    for negatives, so small negatives hash like int4), then hashed as 32 bits."""
    v = values.astype(np.int64, copy=False)
    low = v.astype(U32)
    high = (v >> 32).astype(U32)
    return hash_uint32(low ^ np.where(v >= 0, high, ~high), seed)


def hash_float8(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """hashfloat8extended(value, seed): zero (either sign) hashes to the seed, every NaN alike,
    anything else is its 8 bytes through hash_bytes_extended."""
    v = values.astype(np.float64, copy=False)
    bits = v.view(U64).copy()
    bits[np.isnan(v)] = _FLOAT8_NAN
    a, b, c = _start(len(v), 8, seed)
    a += (bits & U64(0xFFFFFFFF)).astype(U32)
    b += (bits >> U64(32)).astype(U32)
    hashed = _final(a, b, c)
    hashed[v == 0] = seed
    return hashed


def hash_bytes(array: pa.Array, seed: int = 0) -> np.ndarray:
    """hash_any_extended(bytes, seed) of each value (text as UTF-8, bytea); NULLs hash to 0."""
    array = array.cast(pa.large_binary())
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=U64)
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset : array.offset + n + 1]
    starts = offsets[:-1] - offsets[0]
    lengths = offsets[1:] - offsets[:-1]
    rounds = lengths // 12
    most = int(rounds.max())
    # Zero bytes past the end: reads of a round or a tail never leave the array.
    data = np.zeros(int(offsets[-1] - offsets[0]) + 12 * (min(most, _WIDE_ROUNDS) + 2), np.uint8)
    if data_buffer is not None and offsets[-1] > offsets[0]:
        data[: offsets[-1] - offsets[0]] = np.frombuffer(data_buffer, np.uint8)[
            offsets[0] : offsets[-1]
        ]
    # The little-endian 32-bit word starting at each byte (overlapping, unaligned views).
    word_at = np.ndarray(shape=(len(data) - 3,), dtype="<u4", buffer=data, strides=(1,))
    a, b, c = _bytes_start(lengths, seed)
    if most <= _WIDE_ROUNDS:
        _rounds_wide(word_at, starts, rounds, most, a, b, c)
    else:
        _rounds_longest_first(word_at, starts, rounds, a, b, c)
    # The last 0..11 bytes: zero-padded words, the third shifted left by 8 (lookup3's switch).
    at = starts + 12 * rounds
    rest = lengths - 12 * rounds
    a += word_at[at] & _TAIL_MASKS[0][rest]
    b += word_at[at + 4] & _TAIL_MASKS[1][rest]
    c += (word_at[at + 8] & _TAIL_MASKS[2][rest]) << U32(8)
    result = _final(a, b, c)
    if array.null_count:
        result[np.asarray(array.is_null())] = 0
    return result


def _bytes_start(lengths: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The state hash_bytes_extended starts from for keys of these lengths. A seed is mixed in
    once per length up to the longest when that is fewer mixes than one per value."""
    top = int(lengths.max())
    each = np.arange(top + 1) if seed and top < len(lengths) else lengths
    a = (each + _GOLDEN).astype(U32)
    b, c = a.copy(), a.copy()
    _seeded(a, b, c, seed)
    if each is lengths:
        return a, b, c
    return a[lengths], b[lengths], c[lengths]


def _tail_masks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per count of bytes left after the rounds (0..11), the bytes of each of the three tail
    words that count: up to 4, 4 and 3 (lookup3 takes the last word's bytes shifted by 8)."""
    rest = np.arange(12)
    counts = (np.clip(rest, 0, 4), np.clip(rest - 4, 0, 4), np.clip(rest - 8, 0, 3))
    a, b, c = (((1 << (8 * n.astype(np.uint64))) - 1).astype(U32) for n in counts)
    return a, b, c


_TAIL_MASKS = _tail_masks()

# Values of up to this many 12-byte rounds are mixed all together, a finished value keeping
# its state; longer ones go longest first over a shrinking prefix.
_WIDE_ROUNDS = 4


def _rounds_wide(
    word_at: np.ndarray,
    starts: np.ndarray,
    rounds: np.ndarray,
    most: int,
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
) -> None:
    for k in range(most):
        at = starts + 12 * k
        active = rounds > k
        if active.all():  # as often (values of similar lengths): no copy of the state
            a += word_at[at]
            b += word_at[at + 4]
            c += word_at[at + 8]
            _mix(a, b, c)
            continue
        sa, sb, sc = a + word_at[at], b + word_at[at + 4], c + word_at[at + 8]
        _mix(sa, sb, sc)
        np.copyto(a, sa, where=active)
        np.copyto(b, sb, where=active)
        np.copyto(c, sc, where=active)


def _rounds_longest_first(
    word_at: np.ndarray,
    starts: np.ndarray,
    rounds: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
) -> None:
    order = np.argsort(-rounds, kind="stable")
    ordered_starts, ordered_rounds = starts[order], rounds[order]
    sa, sb, sc = a[order], b[order], c[order]
    active = len(order)
    for k in range(int(ordered_rounds[0])):
        while ordered_rounds[active - 1] <= k:
            active -= 1
        at = ordered_starts[:active] + 12 * k
        va, vb, vc = sa[:active], sb[:active], sc[:active]  # views: sa, sb, sc change in place
        va += word_at[at]
        vb += word_at[at + 4]
        vc += word_at[at + 8]
        _mix(va, vb, vc)
    a[order], b[order], c[order] = sa, sb, sc


def combine(hashes: list[np.ndarray]) -> np.ndarray:
    """hash_record_extended's fold of element hashes: result = result * 31 + element."""
    result = np.zeros(len(hashes[0]) if hashes else 0, dtype=U64)
    for element in hashes:
        result = result * U64(31) + element
    return result


def hash_json_here(texts: pa.Array, seed: int) -> np.ndarray:
    """Hashes of JSON texts in the form Postgres prints them as jsonb, computed in Python (one
    value at a time: exact, but about 10 µs a value)."""
    return hash_bytes(jsonb_text(texts), seed)


# How JSON texts are hashed as jsonb, with a seed: here, or by a Postgres that parses them (much
# faster).
JsonHasher = Callable[[pa.Array, int], np.ndarray]


def column_hash(
    array: pa.Array, column: PgColumn, *, seed: int = 0, hash_json: JsonHasher = hash_json_here
) -> np.ndarray:
    """The extended hash, with `seed`, Postgres computes for each value of a wire column in its
    `hash_form`; NULL hashes to 0."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    form = hash_form(column)
    if form == "scaled":
        hashed = hash_int8(_unscaled(array), seed)
    elif form == "text" and column.ddl == "jsonb":
        return hash_json(array, seed)
    elif form == "text":
        return hash_bytes(pl.Series(array).cast(pl.String).to_arrow(), seed)
    elif column.ddl in ("text", "bytea"):
        return hash_bytes(array, seed)
    else:
        hashed = _fixed_width_hash(array, column.ddl, seed)
    if array.null_count:
        hashed[np.asarray(array.is_null())] = 0
    return hashed


def _unscaled(array: pa.Array) -> np.ndarray:
    """A decimal128 array's unscaled integers (the low 64 bits, all there is below 10^19)."""
    words = np.frombuffer(array.buffers()[1], dtype="<i8")
    return words[2 * array.offset : 2 * (array.offset + len(array)) : 2]


def _fixed_width_hash(array: pa.Array, ddl: str, seed: int) -> np.ndarray:
    if ddl in ("bigint", "time", "interval"):
        # time and interval hash their microseconds as int8 (an interval of months and days
        # spans them as 30-day months; the sync writes microseconds only).
        return hash_int8(_numbers(array.cast(pa.int64()) if ddl != "bigint" else array), seed)
    if ddl in ("integer", "smallint", "boolean"):
        return hash_uint32(_numbers(array.cast(pa.int32())).astype(U32), seed)
    if ddl in ("real", "double precision"):
        return hash_float8(_numbers(array.cast(pa.float64())), seed)
    if ddl == "date":
        days = _numbers(array.cast(pa.int32())).astype(np.int64) - _PG_EPOCH_DAYS
        return hash_uint32(days.astype(U32), seed)
    if ddl in ("timestamp", "timestamptz"):
        micros = _numbers(array.cast(pa.int64())) - _PG_EPOCH_US
        return hash_int8(micros, seed)
    raise ValueError(f"no Postgres hash for column type {ddl}")


def _numbers(array: pa.Array) -> np.ndarray:
    """The values as numpy, NULLs filled (their hash is replaced by 0 afterwards)."""
    if array.null_count:
        array = pc.fill_null(array, pa.scalar(0, array.type) if array.type != pa.bool_() else False)
    return array.to_numpy(zero_copy_only=False)


def row_hashes(
    batch: pa.RecordBatch, columns: tuple[PgColumn, ...], *, hash_json: JsonHasher = hash_json_here
) -> np.ndarray:
    """hashint8extended(h1 # h2 # ... # hn, 0) of each row, hi being column i's own hash seeded
    with i (NULL: 0); see `postgres.fingerprint.row_hash`."""
    mixed = np.zeros(batch.num_rows, dtype=U64)
    for seed, column in enumerate(columns, start=1):
        mixed ^= column_hash(batch.column(column.name), column, seed=seed, hash_json=hash_json)
    return hash_int8(mixed.view(np.int64))


def key_hashes(
    batch: pa.RecordBatch, columns: tuple[PgColumn, ...], *, hash_json: JsonHasher = hash_json_here
) -> np.ndarray:
    """hash_record_extended(ROW(key columns), 0) of each row, `columns` in key order."""
    return combine([column_hash(batch.column(c.name), c, hash_json=hash_json) for c in columns])


def jsonb_text(array: pa.Array) -> pa.Array:
    """JSON text (as the sync sends it) in the form Postgres prints jsonb: keys ordered by
    length then bytes, the last of duplicate keys kept, `", "` and `": "` between items, numbers
    as numeric prints them."""
    values = array.to_pylist()
    return pa.array(
        [None if v is None else _jsonb(json.loads(v, parse_float=Decimal)) for v in values],
        pa.large_string(),
    )


def _jsonb(value: Any) -> str:
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
        return "{" + ", ".join(f"{_string(k)}: {_jsonb(v)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_jsonb(v) for v in value) + "]"
    if isinstance(value, str):
        return _string(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        # numeric keeps the digits after the point it was given (1.50, 1e-7 -> 0.0000001) and
        # has no negative zero.
        if value.is_zero():
            value = abs(value)
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)
        return f"{value:.{max(0, -exponent)}f}"
    return str(value)


def _string(text: str) -> str:
    # Python escapes exactly what Postgres's escape_json does: quote, backslash, \b \f \n \r \t
    # and other control characters as \u00XX; everything else stays as it is.
    return json.dumps(text, ensure_ascii=False)
