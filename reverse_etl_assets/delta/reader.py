"""Open a Delta source at a pinned version and stream it as Arrow record batches.

Everything delta-rs specific on the read side of a snapshot lives here.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from reverse_etl_assets.errors import SourceError, SourceMissing, TransientError

# Rows per batch. Measured on the 10-column benchmark (2 cores): 16k rows (~2 MB encoded) cost the
# least CPU to read and encode and peaked ~30 MB lower than 64k rows; 8k saved only a few more MB.
BATCH_ROWS = 16_384


@dataclass(frozen=True, kw_only=True)
class SourceSnapshot:
    """A Delta table pinned at one version: what a snapshot sync reads."""

    uri: str
    version: int
    table_id: str
    schema: pa.Schema
    cdf_enabled: bool
    table: DeltaTable

    def rows(self) -> int | None:
        """Row count from the log's file statistics, when every file has them (no data read)."""
        actions = pa.table(self.table.get_add_actions(flatten=True))
        counts = actions.column("num_records")
        if counts.null_count:
            return None
        return int(pc.sum(counts).as_py() or 0)

    def size_bytes(self) -> int:
        """Bytes of the version's data files, from the log (no data read)."""
        actions = pa.table(self.table.get_add_actions(flatten=True))
        return int(pc.sum(actions.column("size_bytes")).as_py() or 0)


def open_source(
    uri: str, *, storage_options: dict[str, str], version: int | None = None
) -> SourceSnapshot:
    """Open the Delta table at `uri`, at `version` (default: the latest)."""
    try:
        table = DeltaTable(uri, version=version, storage_options=storage_options or None)
    except TableNotFoundError as exc:
        raise SourceMissing(
            f"no Delta table at {uri}: check `source` (and `lake_root` / REVERSE_ETL_LAKE_ROOT)"
        ) from exc
    except DeltaError as exc:
        raise SourceError(f"cannot open Delta table {uri} at version {version}: {exc}") from exc
    except OSError as exc:
        raise reach_error(uri, exc) from exc
    metadata = table.metadata()
    config = metadata.configuration or {}
    return SourceSnapshot(
        uri=uri,
        version=table.version(),
        table_id=str(metadata.id),
        schema=pa.schema(table.schema().to_arrow()),
        cdf_enabled=config.get("delta.enableChangeDataFeed", "false").lower() == "true",
        table=table,
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DENIED = re.compile(
    r"\b(401|403)\b|forbidden|access ?denied|unauthori[sz]ed|invalidaccesskeyid|"
    r"signaturedoesnotmatch|expiredtoken|permission denied|credential",
    re.IGNORECASE,
)


def reach_error(uri: str, exc: Exception) -> SourceError | TransientError:
    """An object-store failure as a short message: refused access is terminal (only new
    credentials help), anything else (network, throttling) transient."""
    text = _ANSI.sub("", str(exc))
    text = text.split("<?xml", 1)[0].strip()
    if len(text) > 500:
        text = text[:500] + "..."
    if _DENIED.search(text):
        return SourceError(
            f"access to Delta table {uri} was refused: {text}. Check the credentials in "
            "`storage_options` (or the environment) and the bucket's permissions"
        )
    return TransientError(f"cannot reach Delta table {uri}: {text}")


def enable_change_data_feed(uri: str, *, storage_options: dict[str, str]) -> None:
    """Set `delta.enableChangeDataFeed = true` on the table (a metadata-only commit)."""
    snapshot = open_source(uri, storage_options=storage_options)
    if not snapshot.cdf_enabled:
        snapshot.table.alter.set_table_properties({"delta.enableChangeDataFeed": "true"})


def latest_version(uri: str, *, storage_options: dict[str, str]) -> int:
    """The source's current Delta version (reads the log only)."""
    return open_source(uri, storage_options=storage_options).version


def read_batches(
    snapshot: SourceSnapshot, *, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Stream the pinned version's rows, one data file at a time, page by page.

    Reading files with a buffered stream (not the dataset scanner, which pre-buffers whole row
    groups) keeps memory to a few batches whatever the file and row-group sizes.
    """
    dataset: pads.Dataset = snapshot.table.to_pyarrow_dataset()
    schema = dataset.schema
    pool = pa.default_memory_pool()
    try:
        for fragment in dataset.get_fragments():
            partition = pads.get_partition_keys(fragment.partition_expression)
            with fragment.filesystem.open_input_file(fragment.path) as handle:
                parquet = pq.ParquetFile(handle, pre_buffer=False, buffer_size=1 << 20)
                in_file = [n for n in schema.names if n not in partition]
                # One decoding thread: on 2 cores shared with Postgres, decoding columns in
                # parallel was no faster and each extra thread kept its own allocator heap
                # (~25 MB more peak RSS).
                batches = parquet.iter_batches(
                    batch_size=batch_rows, columns=in_file, use_threads=False
                )
                for batch in batches:
                    if batch.num_rows:
                        yield _conform(batch, schema, partition)
                    # The allocator keeps freed pages of earlier batches; handing them back
                    # each batch cut peak RSS by ~30 MB for ~1% more CPU (measured).
                    pool.release_unused()
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(
            f"reading Delta table {snapshot.uri} at version {snapshot.version} failed: {exc}. "
            "If its files were vacuumed or rewritten, sync again to read the latest version"
        ) from exc


def read_rows_with_keys(snapshot: SourceSnapshot, keys: pa.Table) -> Iterator[pa.RecordBatch]:
    """The pinned version's rows whose key columns take the values in `keys` (column by column:
    a superset of the exact composite keys, which the caller narrows), batch by batch as they are
    read: a key may hold any number of rows. Files whose statistics exclude the values are
    skipped; the rest are scanned. A read failure, raised while iterating, is a SourceError."""
    dataset: pads.Dataset = snapshot.table.to_pyarrow_dataset()
    wanted = {name: pc.unique(keys.column(name).combine_chunks()) for name in keys.column_names}
    try:
        for batch in dataset.to_batches(
            filter=isin_filter(dataset, wanted),
            columns=snapshot.schema.names,
            batch_size=BATCH_ROWS,
        ):
            if batch.num_rows:
                yield _conform(batch, snapshot.schema, {})
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(
            f"reading Delta table {snapshot.uri} at version {snapshot.version} failed: {exc}. "
            "If its files were vacuumed or rewritten, sync again to read the latest version"
        ) from exc


def isin_filter(dataset: pads.Dataset, wanted: dict[str, pa.Array]) -> pads.Expression:
    """Rows whose columns take the `wanted` values, column by column, files pruned by their
    statistics.

    A file a delta-rs MERGE wrote stores strings and binaries as Arrow views (`string_view`),
    while the dataset's schema and so the values say `string`: Arrow cannot compare such a
    file's statistics with them ("no kernel matching input types"). When a file does, the columns
    are cast to the dataset's types, which every file evaluates (without pruning by statistics).
    Decided from the files' schemas before any row is read, so a stream of rows never restarts.
    """
    cast = _stores_views(dataset, list(wanted))
    tests = []
    for name, values in wanted.items():
        field_type = dataset.schema.field(name).type
        column = pc.field(name).cast(field_type) if cast else pc.field(name)
        tests.append(column.isin(values.cast(field_type)))
    return functools.reduce(operator.and_, tests)


def _stores_views(dataset: pads.Dataset, names: list[str]) -> bool:
    """Whether a file of the dataset stores one of the `names` columns as an Arrow view type."""
    for fragment in dataset.get_fragments():
        schema = fragment.physical_schema
        for name in names:
            index = schema.get_field_index(name)
            if index >= 0:
                kind = schema.field(index).type
                if pa.types.is_string_view(kind) or pa.types.is_binary_view(kind):
                    return True
    return False


def _conform(
    batch: pa.RecordBatch, schema: pa.Schema, partition: dict[str, object]
) -> pa.RecordBatch:
    """A file's batch in the table's schema: partition values added, columns ordered and typed
    (a column added to the table after the file was written is NULL in it)."""
    arrays = []
    for field in schema:
        if field.name in partition:
            value = pa.scalar(partition[field.name], field.type)
            arrays.append(pa.repeat(value, batch.num_rows))  # no Python list per row
        elif field.name not in batch.schema.names:
            arrays.append(pa.nulls(batch.num_rows, field.type))
        else:
            column = batch.column(field.name)
            arrays.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
