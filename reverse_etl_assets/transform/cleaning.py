"""Row-level rules applied to every batch before it is written: NULL keys and NUL bytes.

All of it is vectorized (Arrow compute); a violation names the table, the column and a sample key.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reverse_etl_assets.errors import DataError
from reverse_etl_assets.schema.delta_to_postgres import PgColumn, to_wire

# A JSON \u0000 escape that is not itself escaped (preceded by an even number of backslashes).
_JSON_NUL = r"(?:^|[^\\])(?:\\\\)*\\u0000"
_JSON_NUL_CAPTURE = r"((?:^|[^\\])(?:\\\\)*)\\u0000"


def drop_null_keys(batch: pa.RecordBatch, key: tuple[str, ...]) -> tuple[pa.RecordBatch, int]:
    """Remove rows with a NULL in any key column; return the rest and how many were removed."""
    valid: pa.Array | None = None
    for name in key:
        column_valid = pc.is_valid(batch.column(name))
        valid = column_valid if valid is None else pc.and_(valid, column_valid)
    if valid is None:
        return batch, 0
    kept = pc.sum(valid).as_py() or 0
    if kept == batch.num_rows:
        return batch, 0
    return batch.filter(valid), batch.num_rows - kept


def apply_invalid_characters(
    batch: pa.RecordBatch,
    columns: tuple[PgColumn, ...],
    *,
    policy: str,
    table: str,
    key: tuple[str, ...],
) -> pa.RecordBatch:
    """Postgres text and jsonb cannot hold NUL (0x00): fail naming column and key, or strip it."""
    arrays = list(batch.columns)
    changed = False
    for i, column in enumerate(columns):
        if column.wire not in ("text", "json"):
            continue
        array = arrays[i]
        if column.wire == "text" and not _may_hold_nul(array):
            continue
        pattern = _JSON_NUL if column.wire == "json" else "\x00"
        if column.wire == "json":
            hits = pc.match_substring_regex(array, pattern)
        else:
            hits = pc.match_substring(array, pattern)
        if not pc.any(hits).as_py():
            continue
        if policy == "fail":
            row = pc.index(hits, True).as_py()
            sample = {k: batch.column(k)[row].as_py() for k in key}
            count = pc.sum(hits).as_py()
            raise DataError(
                f"synced table {table!r}: column {column.name!r} holds a NUL byte (0x00) in "
                f"{count} row(s) of this batch, e.g. key {sample}; Postgres text cannot store it. "
                "Clean the source, or set `on_invalid_characters: strip` to remove NUL bytes"
            )
        arrays[i] = _strip(array, json=column.wire == "json")
        changed = True
    if not changed:
        return batch
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


def columns_with_nul(batch: pa.RecordBatch, columns: tuple[PgColumn, ...]) -> pa.Array:
    """Per row of a wire batch: the name of its first text or JSON column holding a NUL byte,
    else NULL (to judge later, when only some of the rows will be written)."""
    found = pa.nulls(batch.num_rows, pa.string())
    for column, array in reversed(list(zip(columns, batch.columns, strict=True))):
        if column.wire not in ("text", "json"):
            continue
        if column.wire == "text" and not _may_hold_nul(array):
            continue
        if column.wire == "json":
            hits = pc.match_substring_regex(array, _JSON_NUL)
        else:
            hits = pc.match_substring(array, "\x00")
        if pc.any(hits).as_py():
            found = pc.if_else(pc.fill_null(hits, False), column.name, found)
    return found


def _may_hold_nul(array: pa.Array) -> bool:
    """Whether a string array's bytes hold a zero byte: one scan of its data buffer, about 10x
    cheaper than searching value by value (a string view, whose short values live in their view,
    always may)."""
    if isinstance(array, pa.ChunkedArray):
        return any(_may_hold_nul(chunk) for chunk in array.chunks)
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        return True
    _, offsets_buffer, data = array.buffers()
    if data is None or len(array) == 0:
        return False
    width = np.int64 if pa.types.is_large_string(array.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, dtype=width)
    first, last = int(offsets[array.offset]), int(offsets[array.offset + len(array)])
    return bool((np.frombuffer(data, dtype=np.uint8)[first:last] == 0).any())


def _strip(array: pa.Array, *, json: bool) -> pa.Array:
    if not json:
        return pc.replace_substring(array, "\x00", "")
    # Adjacent escapes overlap the capture; a few passes remove runs of them.
    while pc.any(pc.match_substring_regex(array, _JSON_NUL)).as_py():
        array = pc.replace_substring_regex(array, _JSON_NUL_CAPTURE, r"\1")
    return array


class BatchPreparer:
    """Source batches -> wire batches: NULL-key rows dropped (and counted), columns converted
    for the encoder, the NUL-byte policy applied. One object per load."""

    def __init__(
        self, columns: tuple[PgColumn, ...], *, key: tuple[str, ...], policy: str, table: str
    ) -> None:
        self.columns = columns
        self.key = key
        self.policy = policy
        self.table = table
        self.skipped_null_keys = 0

    def prepare(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """One batch, ready for `binary_copy.encode_rows`."""
        batch, skipped = drop_null_keys(batch, self.key)
        self.skipped_null_keys += skipped
        return apply_invalid_characters(
            to_wire(batch, self.columns),
            self.columns,
            policy=self.policy,
            table=self.table,
            key=self.key,
        )

    def stream(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Every batch of `batches`, prepared, lazily."""
        for batch in batches:
            yield self.prepare(batch)
