"""Stream the Delta Change Data Feed of a version range, file by file, batch by batch.

Each version's change data is its change (cdc) files, else the data files it added (inserted
rows) and removed (deleted rows), read with a small buffered stream: memory holds a batch or two
whatever the range and the files' row groups. A version this cannot read whole files of
(deletion vectors, column mapping, files outside the table) is read by delta-rs instead. Errors
(a vacuumed file, say) surface only while iterating, so the caller reads the range to its end
before anything becomes visible; an error means the increment is impossible, never "no changes".
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from reverse_etl_assets.delta.cdf_columns import CHANGE_TYPE, COMMIT_VERSION
from reverse_etl_assets.delta.log import ChangeFile, RangeUnavailable, open_log, read_commits
from reverse_etl_assets.delta.preimages import PairedPreimages
from reverse_etl_assets.delta.reader import BATCH_ROWS

_COLUMN_MAPPING = "delta.columnMapping.mode"


def stream_changes(
    table: DeltaTable,
    *,
    uri: str,
    storage_options: dict[str, str],
    start: int,
    end: int,
    schema: pa.Schema,
    key: tuple[str, ...] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Every CDF row of versions `start..end`, version by version: the columns of `schema`,
    typed as there (a column a file lacks is NULL), then CHANGE_TYPE and COMMIT_VERSION. With
    `key`, the update preimages a postimage of the same key pairs are left out (see
    `delta.preimages`). A read failure, raised while iterating, is RangeUnavailable."""
    names = [*schema.names, CHANGE_TYPE, COMMIT_VERSION]
    commits = read_commits(uri, storage_options=storage_options, start=start, end=end)
    mapping = (table.metadata().configuration or {}).get(_COLUMN_MAPPING, "none")
    if mapping != "none" or any(c.needs_engine for c in commits):
        yield from _engine_changes(table, start=start, end=end, schema=schema, names=names)
        return
    files = open_log(uri, storage_options=storage_options)
    pool = pa.default_memory_pool()
    for commit in commits:
        for change in commit.change_files:
            try:
                with files.open_input_file(change.path) as handle:
                    parquet = pq.ParquetFile(handle, pre_buffer=False, buffer_size=1 << 20)
                    present = set(parquet.schema_arrow.names)
                    wanted = [n for n in (*schema.names, CHANGE_TYPE) if n in present]
                    paired = None
                    if key is not None and change.change_type is None:
                        paired = PairedPreimages.of_file(parquet, key, BATCH_ROWS)
                    for batch in parquet.iter_batches(
                        batch_size=BATCH_ROWS, columns=wanted, use_threads=False
                    ):
                        if batch.num_rows:
                            rows = _conform(batch, schema, names, change, commit.version)
                            yield rows if paired is None else paired.drop(rows)
                        # Hand freed pages back each batch (as the snapshot reader does).
                        pool.release_unused()
            except (OSError, pa.ArrowException) as exc:
                raise RangeUnavailable(
                    f"reading the change data of version {commit.version} failed: {exc}"
                ) from exc


def _conform(
    batch: pa.RecordBatch, schema: pa.Schema, names: list[str], change: ChangeFile, version: int
) -> pa.RecordBatch:
    """A file's batch as a feed batch: partition values added, columns ordered and typed."""
    rows = batch.num_rows
    arrays = []
    for field in schema:
        if field.name in change.partition_values:
            value = _partition_value(change.partition_values[field.name], field.type)
            arrays.append(pa.repeat(value, rows))
        elif field.name in batch.schema.names:
            column = batch.column(field.name)
            arrays.append(column if column.type == field.type else column.cast(field.type))
        else:
            arrays.append(pa.nulls(rows, field.type))
    if change.change_type is None:
        arrays.append(batch.column(CHANGE_TYPE).cast(pa.string()))
    else:
        arrays.append(pa.repeat(pa.scalar(change.change_type, pa.string()), rows))
    arrays.append(pa.repeat(pa.scalar(version, pa.int64()), rows))
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _partition_value(text: str | None, type_: pa.DataType) -> pa.Scalar:
    """A partition value from the log (text) as a scalar of its column's type.

    A `timestamp` (UTC) partition value is written without a zone ("2024-01-01 00:00:00.000000"),
    which Arrow will not read as zoned: it is read as a plain timestamp, which is UTC. An empty
    value is NULL, whatever the type: how Delta readers (delta-rs's own table scan included)
    read a row whose string partition value was written as "".
    """
    value = pa.array([text or None], pa.string())
    try:
        return value.cast(type_)[0]
    except pa.ArrowInvalid:
        if not (pa.types.is_timestamp(type_) and type_.tz is not None):
            raise
        return value.cast(pa.timestamp(type_.unit)).cast(type_)[0]


def _engine_changes(
    table: DeltaTable, *, start: int, end: int, schema: pa.Schema, names: list[str]
) -> Iterator[pa.RecordBatch]:
    """The range as delta-rs reads it (it holds a row group of each file it reads)."""
    partitions = set(table.metadata().partition_columns)
    try:
        reader = pa.RecordBatchReader.from_stream(
            table.load_cdf(starting_version=start, ending_version=end)
        )
        for batch in reader:
            if batch.num_rows:
                yield _select(batch, schema, names, partitions)
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise RangeUnavailable(
            f"reading the Change Data Feed of versions {start}..{end} failed: {exc}"
        ) from exc


def _select(
    batch: pa.RecordBatch, schema: pa.Schema, names: list[str], partitions: set[str]
) -> pa.RecordBatch:
    arrays = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            arrays.append(pa.nulls(batch.num_rows, field.type))
            continue
        # The feed's types are not always the table's (string views for strings): the rules
        # applied to every batch (NUL bytes) need the table's.
        column = batch.column(index)
        column = column if column.type == field.type else column.cast(field.type)
        if field.name in partitions and pa.types.is_string(field.type):
            # delta-rs's feed gives a partition value logged as "" as it is; the table reads
            # it as NULL (see `_partition_value`).
            column = pc.if_else(pc.equal(column, ""), pa.scalar(None, field.type), column)
        arrays.append(column)
    arrays.append(batch.column(CHANGE_TYPE).cast(pa.string()))
    arrays.append(batch.column(COMMIT_VERSION).cast(pa.int64()))
    return pa.RecordBatch.from_arrays(arrays, names=names)
