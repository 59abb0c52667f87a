"""Change Data Feed batches -> the rows staged in Postgres, one batch at a time (bounded memory).

Rows that leave the table (deletes and update preimages) matter only by their key, so they are
staged with their key alone; rows that arrive (inserts and update postimages) whole, each marked
arriving or not. Rows with a NULL key are never synced: they are dropped here and counted (rows
arriving minus rows leaving).
Which change per key wins is decided in Postgres over the whole staged range
(`postgres.change_stage`), so NUL bytes are judged there too: under `on_invalid_characters: fail`
a row is staged stripped, marked with the column that held one, and fails the sync only if it is
one that would be written (a value a later version replaced never reaches Postgres).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from reverse_etl_assets.delta.cdf_columns import (
    CHANGE_TYPE,
    COMMIT_VERSION,
    DELETE,
    INSERT,
    UPDATE_POSTIMAGE,
    UPDATE_PREIMAGE,
)
from reverse_etl_assets.schema.delta_to_postgres import PgColumn, to_wire
from reverse_etl_assets.transform.cleaning import (
    apply_invalid_characters,
    columns_with_nul,
    drop_null_keys,
)

# Change types of rows that leave the table; the others arrive.
LEAVING = (DELETE, UPDATE_PREIMAGE)
# Columns and tables of our own while an increment lands all start with this prefix, which a
# source column may therefore not use (preflight refuses it).
RESERVED_PREFIX = "_retl_"
# Staged after the source's columns: whether the row arrives (else it leaves), its version, and
# whether it may add a row to the source: an insert, or a postimage no preimage of its key pairs
# (`delta.preimages`; an update that moved the row to another key, or whose preimage is staged).
ARRIVING = RESERVED_PREFIX + "arriving"
NEW_ROW = RESERVED_PREFIX + "new_row"
CHANGE_COLUMNS = (
    PgColumn(name=ARRIVING, ddl="boolean", wire="plain"),
    PgColumn(name=COMMIT_VERSION, ddl="bigint", wire="plain"),
    PgColumn(name=NEW_ROW, ddl="boolean", wire="plain"),
)
# The change types of rows that may add one.
_NEW_ROWS = (INSERT, UPDATE_POSTIMAGE)
# Staged last: the column whose NUL byte was stripped from the row (NULL: none).
INVALID = RESERVED_PREFIX + "invalid"
INVALID_COLUMN = PgColumn(name=INVALID, ddl="text", wire="text")


class ChangePreparer:
    """Feed batches -> wire batches for the stage: NULL-key rows dropped and counted, leaving
    rows cut to their key, values converted and the NUL-byte policy applied. One per range."""

    def __init__(
        self,
        columns: tuple[PgColumn, ...],
        *,
        key: tuple[str, ...],
        policy: str,
        table: str,
        keep_keys: bool = False,
    ) -> None:
        self.source_columns = columns
        # The stage of the feed's rows, and of source rows (`rows`).
        self.columns = (*columns, *CHANGE_COLUMNS, INVALID_COLUMN)
        self.row_columns = (*columns, INVALID_COLUMN)
        self.key = key
        self.policy = policy
        self.table = table
        # With `keep_keys`, the key columns of every (non-NULL-key) row, for a caller that must
        # look the touched keys up in the source (a timeseries range that removed rows).
        self.keep_keys = keep_keys
        self.touched: list[pa.RecordBatch] = []
        self.null_key_rows = 0  # rows arriving minus rows leaving, among NULL-key rows
        self.leaving_rows = 0
        self.arriving_rows = 0
        self.new_rows = 0  # arriving rows that may add a row (see NEW_ROW)
        self.marked_rows = 0  # rows staged with a NUL byte marker (only under `fail`)

    def prepare(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        """The wire batches (arriving rows, then leaving rows) of one feed batch."""
        leaving = pc.is_in(batch.column(CHANGE_TYPE), pa.array(LEAVING, pa.string()))
        null_key = _any_null(batch, self.key)
        if pc.any(null_key).as_py():
            nulls_leaving = _count(pc.and_(null_key, leaving))
            self.null_key_rows += _count(null_key) - 2 * nulls_leaving
            keep = pc.invert(null_key)
            batch, leaving = batch.filter(keep), leaving.filter(keep)
        if self.keep_keys:
            self.touched.append(batch.select(list(self.key)))
        gone = _count(leaving)
        self.leaving_rows += gone
        self.arriving_rows += batch.num_rows - gone
        batch = _with_arriving(batch, leaving)
        self.new_rows += _count(batch.column(NEW_ROW))
        feed_columns = self.columns[:-1]
        if gone < batch.num_rows:
            arriving = batch.filter(pc.invert(leaving)) if gone else batch
            yield self._wire(arriving, feed_columns)
        if gone:
            yield self._wire(_keys_only(batch.filter(leaving), self.key), feed_columns)

    def stream(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Every feed batch of `batches`, prepared, lazily."""
        for batch in batches:
            yield from self.prepare(batch)

    def rows(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Source rows (the source's columns only), prepared for a stage of `row_columns`."""
        for batch in batches:
            kept, _ = drop_null_keys(batch, self.key)
            yield self._wire(kept, self.source_columns)

    def _wire(self, batch: pa.RecordBatch, columns: tuple[PgColumn, ...]) -> pa.RecordBatch:
        """Converted for the encoder, NUL bytes stripped and the INVALID marker appended."""
        wire = to_wire(batch, columns)
        marker = columns_with_nul(wire, columns)
        if marker.null_count < len(marker):
            wire = apply_invalid_characters(
                wire, columns, policy="strip", table=self.table, key=self.key
            )
            if self.policy != "fail":
                marker = pa.nulls(len(marker), pa.string())
            self.marked_rows += len(marker) - marker.null_count
        return pa.RecordBatch.from_arrays(
            [*wire.columns, marker], names=[*wire.schema.names, INVALID]
        )

    def touched_keys(self) -> pa.Table | None:
        """The key columns of every staged row (with `keep_keys`; None when none was staged)."""
        return pa.Table.from_batches(self.touched) if self.touched else None


def _with_arriving(batch: pa.RecordBatch, leaving: pa.Array) -> pa.RecordBatch:
    """The feed batch with its CHANGE_TYPE column replaced by ARRIVING, and NEW_ROW last."""
    index = batch.schema.get_field_index(CHANGE_TYPE)
    new = pc.is_in(batch.column(CHANGE_TYPE), pa.array(_NEW_ROWS, pa.string()))
    return batch.set_column(index, ARRIVING, pc.invert(leaving)).append_column(NEW_ROW, new)


def _keys_only(batch: pa.RecordBatch, key: tuple[str, ...]) -> pa.RecordBatch:
    """The batch with every column but the key and the feed's own ones NULL."""
    kept = (*key, ARRIVING, COMMIT_VERSION, NEW_ROW)
    arrays = [
        column if name in kept else pa.nulls(batch.num_rows, column.type)
        for name, column in zip(batch.schema.names, batch.columns, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


def _any_null(batch: pa.RecordBatch, key: tuple[str, ...]) -> pa.Array:
    mask: pa.Array | None = None
    for name in key:
        null = pc.is_null(batch.column(name))
        mask = null if mask is None else pc.or_(mask, null)
    assert mask is not None
    return mask


def _count(mask: pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0)
