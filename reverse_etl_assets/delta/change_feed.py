"""Stream the Delta Change Data Feed of a version range, batch by batch.

delta-rs raises errors (a vacuumed file, say) only while iterating, so the caller reads the range
to its end before anything becomes visible; an error means the increment is impossible, never
"no changes".
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from reverse_etl_assets.delta.log import RangeUnavailable

CHANGE_TYPE = "_change_type"
COMMIT_VERSION = "_commit_version"
COMMIT_TIMESTAMP = "_commit_timestamp"
# The columns delta-rs adds to every CDF row; a source column may not use these names.
CDF_COLUMNS = frozenset({CHANGE_TYPE, COMMIT_VERSION, COMMIT_TIMESTAMP})
# The values of CHANGE_TYPE.
INSERT = "insert"
DELETE = "delete"
UPDATE_PREIMAGE = "update_preimage"
UPDATE_POSTIMAGE = "update_postimage"


def stream_changes(
    table: DeltaTable, *, start: int, end: int, schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """Every CDF row of versions `start..end`, batch by batch as delta-rs produces them
    (unordered): the columns of `schema`, typed as there (a column the feed lacks is NULL), then
    CHANGE_TYPE and COMMIT_VERSION. A read failure, raised while iterating, is RangeUnavailable."""
    names = [*schema.names, CHANGE_TYPE, COMMIT_VERSION]
    try:
        reader = pa.RecordBatchReader.from_stream(
            table.load_cdf(starting_version=start, ending_version=end)
        )
        for batch in reader:
            if batch.num_rows:
                yield _select(batch, schema, names)
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise RangeUnavailable(
            f"reading the Change Data Feed of versions {start}..{end} failed: {exc}"
        ) from exc


def _select(batch: pa.RecordBatch, schema: pa.Schema, names: list[str]) -> pa.RecordBatch:
    arrays = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            arrays.append(pa.nulls(batch.num_rows, field.type))
            continue
        # The feed's types are not always the table's (string views for strings): the rules
        # applied to every batch (NUL bytes) need the table's.
        column = batch.column(index)
        arrays.append(column if column.type == field.type else column.cast(field.type))
    arrays.append(batch.column(CHANGE_TYPE).cast(pa.string()))
    arrays.append(batch.column(COMMIT_VERSION).cast(pa.int64()))
    return pa.RecordBatch.from_arrays(arrays, names=names)
