"""Update preimages that cannot decide anything, dropped as a change data file is read.

An UPDATE writes each changed row twice to a change data file: its preimage (leaving) and its
postimage (arriving), in the same version. When the postimage has the same key (the update did
not change the key) the arriving row wins inside its version, so the preimage changes nothing:
dropping it before staging saves its trip to Postgres (half the rows of an update-heavy range).
A preimage whose key no postimage of its file carries (the update moved the row to another key)
is kept: it is what deletes the old key. Only the file's postimage keys are held, never the range's.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from reverse_etl_assets.delta.cdf_columns import CHANGE_TYPE, UPDATE_POSTIMAGE, UPDATE_PREIMAGE

_ROW = "__row"


class PairedPreimages:
    """Which rows of one change data file to keep: all but the preimages a postimage of the same
    key pairs. Found in one pass over the file's key and change type columns (one join per
    file); `drop` then applies it to the file's batches in order."""

    def __init__(self, keep: np.ndarray) -> None:
        self.keep = keep
        self.offset = 0

    @classmethod
    def of_file(
        cls, parquet: pq.ParquetFile, key: tuple[str, ...], batch_size: int
    ) -> PairedPreimages | None:
        """None: nothing to drop, or a key column is not in the file (a partition column) or
        of a type compared nowhere here."""
        if not all(k in parquet.schema_arrow.names for k in key):
            return None
        try:
            frame = pl.from_arrow(
                parquet.iter_batches(
                    batch_size=batch_size, columns=[*key, CHANGE_TYPE], use_threads=False
                )
            )
            assert isinstance(frame, pl.DataFrame)
            rows = frame.with_row_index(_ROW)
            kind = pl.col(CHANGE_TYPE)
            paired = (
                rows.filter(kind == UPDATE_PREIMAGE)
                .join(rows.filter(kind == UPDATE_POSTIMAGE), on=list(key), how="semi")
                .get_column(_ROW)
                .to_numpy()
            )
        except (pl.exceptions.PolarsError, pa.ArrowException, TypeError):
            return None
        if len(paired) == 0:
            return None
        keep = np.ones(frame.height, dtype=bool)
        keep[paired] = False
        return cls(keep)

    def drop(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The file's next batch without its paired preimages (NULL keys never pair: the rows
        of NULL keys are counted, preimages included)."""
        keep = self.keep[self.offset : self.offset + batch.num_rows]
        self.offset += batch.num_rows
        return batch if keep.all() else batch.filter(pa.array(keep))
