"""Update preimages that cannot decide anything, dropped as a change data file is read.

An UPDATE writes each changed row twice to a change data file: its preimage (leaving) and its
postimage (arriving), in the same version. When the postimage has the same key (the update did
not change the key) the arriving row wins inside its version, so the preimage changes nothing:
dropping it before staging saves its trip to Postgres (half the rows of an update-heavy range).
A preimage whose key no postimage of its file carries (the update moved the row to another key)
is kept: it is what deletes the old key. Only one file's keys are held, never the range's, and
only for files of at most MAX_ROWS rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reverse_etl_assets.delta.cdf_columns import CHANGE_TYPE, UPDATE_POSTIMAGE, UPDATE_PREIMAGE

_ROW = "__row"
# Files of more rows are staged whole: pairing holds the file's keys and change types (about 30
# bytes a row for a bigint key), which must stay small beside the pipeline's few batches.
MAX_ROWS = 1_000_000


class PairedPreimages:
    """Which rows of one change data file to keep: all but the preimages a postimage of the same
    key pairs. Found in one pass over the file's key and change type columns (one join per
    file); `drop` then applies it to the file's batches in order."""

    def __init__(self, keep: np.ndarray) -> None:
        self.keep = keep
        self.offset = 0

    @classmethod
    def of_file(cls, parquet: pq.ParquetFile, key: tuple[str, ...]) -> PairedPreimages | None:
        """None: nothing to drop, the file is too large to pair within MAX_ROWS, or a key column
        is not in the file (a partition column) or of a type that cannot be joined here."""
        rows = parquet.metadata.num_rows
        if rows > MAX_ROWS or not all(k in parquet.schema_arrow.names for k in key):
            return None
        try:
            columns = parquet.read(columns=[*key, CHANGE_TYPE], use_threads=False)
            kind = columns.column(CHANGE_TYPE).cast(pa.string())
            keys = pa.table(
                {**{k: _joinable(columns.column(k)) for k in key}, _ROW: np.arange(rows)}
            )
            del columns
            preimages = keys.filter(pc.equal(kind, UPDATE_PREIMAGE))
            postimages = keys.filter(pc.equal(kind, UPDATE_POSTIMAGE)).drop_columns([_ROW])
            del keys, kind
            paired = preimages.join(
                postimages, keys=list(key), join_type="left semi", use_threads=False
            )
        except (pa.ArrowException, TypeError):
            return None
        if paired.num_rows == 0:
            return None
        keep = np.ones(rows, dtype=bool)
        keep[paired.column(_ROW).to_numpy()] = False
        return cls(keep)

    def drop(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The file's next batch without its paired preimages (NULL keys never pair: the rows
        of NULL keys are counted, preimages included)."""
        keep = self.keep[self.offset : self.offset + batch.num_rows]
        self.offset += batch.num_rows
        return batch if keep.all() else batch.filter(pa.array(keep))


def _joinable(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column in a type the join takes: string and binary views (as delta-rs writes text)
    as plain strings and binaries."""
    if pa.types.is_string_view(column.type):
        return column.cast(pa.large_string())
    if pa.types.is_binary_view(column.type):
        return column.cast(pa.large_binary())
    return column
