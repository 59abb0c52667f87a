"""Collect decoded pgoutput changes per Postgres table and turn them into Arrow change frames.

Values stay bytes until a frame is built; then each column is cast once, in Arrow. A table whose
columns change mid-batch gets one segment per shape, unified when the frame is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import pyarrow as pa

from reverse_etl_assets.postgres.replication.messages import (
    UNCHANGED,
    Relation,
    Tuple,
)
from reverse_etl_assets.schema.postgres_to_delta import arrow_schema, cast_column
from reverse_etl_assets.transform.lakehouse_changes import (
    CHANGE_TYPE,
    COMMIT_TIME,
    LSN,
    SEQ,
    XID,
)
from reverse_etl_assets.transform.lakehouse_changes import (
    UNCHANGED as UNCHANGED_COLUMN,
)

INSERT = "insert"
UPDATE_PREIMAGE = "update_preimage"
UPDATE_POSTIMAGE = "update_postimage"
DELETE = "delete"
TRUNCATE = "truncate"
_UTC_US = pa.timestamp("us", tz="UTC")


class Stamp(NamedTuple):
    """Where a change sits in the source's history (a tuple: one is made per change)."""

    lsn: int
    seq: int
    xid: int | None
    commit_time: datetime


@dataclass
class _Segment:
    """Changes of one table while its columns keep one shape, kept as rows (tuples) and turned
    into columns once, when the frame is built: a row costs one list append, not one a column."""

    relation: Relation
    rows: list[Tuple | None] = field(default_factory=list)
    meta: list[tuple[str, int, int, int | None, datetime, list[str] | None]] = field(
        default_factory=list
    )
    has_unchanged: bool = False

    def add(
        self, kind: str, row: Tuple | None, stamp: Stamp, unchanged: list[str] | None = None
    ) -> None:
        self.rows.append(row)
        self.meta.append((kind, stamp.lsn, stamp.seq, stamp.xid, stamp.commit_time, unchanged))
        if kind == INSERT or row is None or (kind == UPDATE_POSTIMAGE and unchanged is None):
            return  # the server never leaves a value unsent in these
        # An unsent TOAST value left in a row (a preimage, or a postimage whose value stays
        # unknown) lands as NULL in its column; `_pg_unchanged` names it.
        self.has_unchanged = self.has_unchanged or any(v is UNCHANGED for v in row)

    def to_arrow(self) -> pa.Table:
        columns = self.relation.columns
        width = len(columns)
        empty: Tuple = (None,) * width
        values = list(zip(*(empty if row is None else row for row in self.rows), strict=True))
        if not values:
            values = [() for _ in columns]
        if self.has_unchanged:
            values = [tuple(None if v is UNCHANGED else v for v in column) for column in values]
        arrays = [
            cast_column(column, pa.array(column_values, pa.binary()))
            for column, column_values in zip(columns, values, strict=True)
        ]
        kinds, lsns, seqs, xids, times, unchanged = (
            list(column) for column in zip(*self.meta, strict=True)
        )
        meta = [
            pa.array(kinds, pa.string()),
            pa.array(lsns, pa.int64()),
            pa.array(seqs, pa.int32()),
            pa.array(xids, pa.int64()),
            pa.array(times, _UTC_US),
            pa.array(unchanged, pa.list_(pa.string())),
        ]
        fields = [*arrow_schema(columns)]
        fields += [
            pa.field(CHANGE_TYPE, pa.string()),
            pa.field(LSN, pa.int64()),
            pa.field(SEQ, pa.int32()),
            pa.field(XID, pa.int64()),
            pa.field(COMMIT_TIME, _UTC_US),
            pa.field(UNCHANGED_COLUMN, pa.list_(pa.string())),
        ]
        return pa.Table.from_arrays([*arrays, *meta], schema=pa.schema(fields))


@dataclass
class TableChanges:
    """Every change of one Postgres table not yet in Delta, in commit order."""

    schema: str
    table: str
    segments: list[_Segment] = field(default_factory=list)
    rows: int = 0
    last_lsn: int = 0

    def segment(self, relation: Relation) -> _Segment:
        """The segment for `relation`'s shape, started anew when the columns changed."""
        if not self.segments or self.segments[-1].relation.columns != relation.columns:
            self.segments.append(_Segment(relation))
        return self.segments[-1]

    def add_insert(self, relation: Relation, new: Tuple, stamp: Stamp) -> None:
        """An inserted row."""
        self._add(relation, INSERT, new, stamp)

    def add_update(self, relation: Relation, old: Tuple | None, new: Tuple, stamp: Stamp) -> None:
        """An update: its preimage when the server sent one, then the postimage, whose unchanged
        TOAST values are taken from a full preimage or else named in `_pg_unchanged`."""
        if old is not None:
            self._add(relation, UPDATE_PREIMAGE, old, stamp)
        missing = [i for i, value in enumerate(new) if value is UNCHANGED]
        if missing and old is not None:
            filled = list(new)
            for i in missing:
                if old[i] is not UNCHANGED and old[i] is not None:
                    filled[i] = old[i]
            new = tuple(filled)
            missing = [i for i in missing if new[i] is UNCHANGED]
        names = [relation.columns[i].name for i in missing] or None
        self._add(relation, UPDATE_POSTIMAGE, new, stamp, names)

    def add_delete(self, relation: Relation, old: Tuple, stamp: Stamp) -> None:
        """A deleted row (its key columns only, unless REPLICA IDENTITY FULL)."""
        self._add(relation, DELETE, old, stamp)

    def add_truncate(self, relation: Relation, stamp: Stamp) -> None:
        """The table was truncated: a row with NULL in every column."""
        self._add(relation, TRUNCATE, None, stamp)

    def first_with(self, column: str) -> tuple[int, int] | None:
        """(lsn, seq) of the first change whose row has `column`: the changes before it were
        made before the column was added."""
        for segment in self.segments:
            if segment.meta and any(c.name == column for c in segment.relation.columns):
                _, lsn, seq, *_ = segment.meta[0]
                return lsn, seq
        return None

    def to_arrow(self) -> pa.Table:
        """One frame of every change, columns unified across shapes (missing ones NULL)."""
        frames = [segment.to_arrow() for segment in self.segments]
        if len(frames) == 1:
            return frames[0]
        return pa.concat_tables(frames, promote_options="permissive")

    def _add(
        self,
        relation: Relation,
        kind: str,
        row: Tuple | None,
        stamp: Stamp,
        unchanged: list[str] | None = None,
    ) -> None:
        self.segment(relation).add(kind, row, stamp, unchanged)
        self.rows += 1
        self.last_lsn = stamp.lsn
