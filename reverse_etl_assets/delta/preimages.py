"""Update preimages that cannot decide anything, dropped as a change data file is read.

An UPDATE writes each changed row twice to a change data file: its preimage (leaving) and its
postimage (arriving), in the same version. When the postimage has the same key (the update did
not change the key) the arriving row wins inside its version, so the preimage changes nothing:
dropping it before staging saves its trip to Postgres (half the rows of an update-heavy range).
A preimage whose key no postimage of its file carries (the update moved the row to another key)
is kept: it is what deletes the old key. The postimages whose preimage was dropped are marked
PAIRED_POSTIMAGE: they update a row that was there, where any other arriving row adds one. Only
one file's keys are held, never the range's, and at most BUDGET_BYTES of them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reverse_etl_assets.delta.cdf_columns import (
    CHANGE_TYPE,
    PAIRED_POSTIMAGE,
    UPDATE_POSTIMAGE,
    UPDATE_PREIMAGE,
)

_ROW = "__row"
# What pairing may hold of one file: its preimages' and postimages' keys and row numbers (16 bytes
# a row for a bigint key: a million-row update's file). A file needing more is staged whole; the
# joins' own tables add about as much again while they run.
BUDGET_BYTES = 16 * 1024 * 1024


class PairedPreimages:
    """Which rows of one change data file to keep: all but the preimages a postimage of the same
    key pairs; and which postimages those pair. Found in one pass over the file's key and change
    type columns (two joins per file; on an object store, a second read of those columns); `drop`
    then applies it to the file's batches in order."""

    def __init__(self, keep: np.ndarray, paired: np.ndarray) -> None:
        self.keep = keep
        self.paired = paired
        self.offset = 0

    @classmethod
    def of_file(
        cls, parquet: pq.ParquetFile, key: tuple[str, ...], batch_rows: int
    ) -> PairedPreimages | None:
        """None: nothing to drop, the file's keys exceed BUDGET_BYTES, or a key column is not
        in the file (a partition column) or of a type that cannot be joined here."""
        if not all(k in parquet.schema_arrow.names for k in key):
            return None
        preimages: list[pa.Table] = []
        postimages: list[pa.Table] = []
        held = rows = 0
        try:
            for batch in parquet.iter_batches(
                batch_size=batch_rows, columns=[*key, CHANGE_TYPE], use_threads=False
            ):
                kind = batch.column(CHANGE_TYPE).cast(pa.string())
                keys = pa.table({k: _joinable(batch.column(k)) for k in key})
                numbered = keys.append_column(_ROW, pa.array(np.arange(rows, rows + len(kind))))
                rows += len(kind)
                preimages.append(numbered.filter(pc.equal(kind, UPDATE_PREIMAGE)))
                postimages.append(numbered.filter(pc.equal(kind, UPDATE_POSTIMAGE)))
                held += preimages[-1].nbytes + postimages[-1].nbytes
                if held > BUDGET_BYTES:
                    return None
            before, after = pa.concat_tables(preimages), pa.concat_tables(postimages)
            dropped = _semi_join(before, after.drop_columns([_ROW]), key)
            updated = _semi_join(after, before.drop_columns([_ROW]), key)
        except (pa.ArrowException, TypeError, ValueError):
            return None
        if dropped.num_rows == 0:
            return None
        keep = np.ones(rows, dtype=bool)
        keep[dropped.column(_ROW).to_numpy()] = False
        paired = np.zeros(rows, dtype=bool)
        paired[updated.column(_ROW).to_numpy()] = True
        return cls(keep, paired)

    def drop(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The file's next batch without its paired preimages, and their postimages marked
        PAIRED_POSTIMAGE (NULL keys never pair: the rows of NULL keys are counted, preimages
        included)."""
        end = self.offset + batch.num_rows
        keep, paired = self.keep[self.offset : end], self.paired[self.offset : end]
        self.offset = end
        if paired.any():
            index = batch.schema.get_field_index(CHANGE_TYPE)
            marked = pc.if_else(pa.array(paired), pa.scalar(PAIRED_POSTIMAGE), batch.column(index))
            batch = batch.set_column(index, CHANGE_TYPE, marked)
        return batch if keep.all() else batch.filter(pa.array(keep))


def _semi_join(rows: pa.Table, other: pa.Table, key: tuple[str, ...]) -> pa.Table:
    """The rows of `rows` whose key `other` holds."""
    return rows.join(other, keys=list(key), join_type="left semi", use_threads=False)


def _joinable(column: pa.Array) -> pa.Array:
    """The column in a type the join takes: string and binary views (as delta-rs writes text)
    as plain strings and binaries."""
    if pa.types.is_string_view(column.type):
        return column.cast(pa.large_string())
    if pa.types.is_binary_view(column.type):
        return column.cast(pa.large_binary())
    return column
