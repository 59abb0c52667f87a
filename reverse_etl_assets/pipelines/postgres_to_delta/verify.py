"""`reverse-etl verify NAME` for a lakehouse sync: each mirror against its Postgres table, by row
count and content, with sample keys of what differs.

The mirror is as of the last LSN landed; run it while the source is quiet (or the follower has
caught up), or a difference may only be a change still on its way. Both sides are streamed and
summed per key bucket (bounded memory); only the rows of a few differing buckets are read again
to name keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import polars as pl
import pyarrow as pa

from reverse_etl_assets.delta.reader import open_source, read_batches
from reverse_etl_assets.errors import SourceMissing
from reverse_etl_assets.pipelines.postgres_to_delta.run import source_dsn
from reverse_etl_assets.pipelines.postgres_to_delta.snapshot import resolve_tables
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.replication.snapshot_copy import copy_batches
from reverse_etl_assets.schema.postgres_to_delta import arrow_schema
from reverse_etl_assets.spec import LakehouseSync
from reverse_etl_assets.transform.buckets import BucketFingerprints

SAMPLE_KEYS = 5
# Key buckets summed on each side (a power of two), and how many differing ones are read again.
BUCKETS = 4096
SAMPLE_BUCKETS = 4
_SEED = 7

Batches = Callable[[], Iterator[pa.RecordBatch]]


@dataclass(frozen=True, kw_only=True)
class MirrorCheck:
    """One mirror compared with its Postgres table."""

    table: str
    postgres_rows: int
    mirror_rows: int
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    @property
    def count_matches(self) -> bool:
        """Same number of rows."""
        return self.postgres_rows == self.mirror_rows

    @property
    def content_matches(self) -> bool:
        """Same rows, value for value."""
        return self.count_matches and not (self.missing or self.extra or self.changed)

    def describe(self) -> str:
        """One line for the terminal."""
        if self.content_matches:
            return f"ok   {self.table}: {self.mirror_rows:,} rows equal"
        parts = [f"Postgres {self.postgres_rows:,} rows, mirror {self.mirror_rows:,}"]
        for word, keys in (("missing", self.missing), ("extra", self.extra)):
            if keys:
                parts.append(f"{word} in the mirror: {', '.join(keys)}")
        if self.changed:
            parts.append(f"different values: {', '.join(self.changed)}")
        return f"DIFF {self.table}: " + "; ".join(parts)


def verify_lakehouse(sync: LakehouseSync, dsn: str) -> list[MirrorCheck]:
    """Compare every mirror of `sync` with its Postgres table."""
    source = source_dsn(sync, dsn)
    with connect(source, autocommit=True) as conn:
        tables = [t for t in resolve_tables(conn, sync) if t.primary_key]
    checks = []
    for info in tables:
        schema = arrow_schema(info.columns)
        postgres = partial(
            copy_batches,
            source,
            snapshot_name=None,
            schema=info.schema,
            table=info.table,
            columns=info.columns,
        )
        mirror = partial(_mirror_batches, sync, info.table, schema)
        label = f"{info.schema}.{info.table}"
        checks.append(_compare_streams(label, schema, postgres, mirror, list(info.primary_key)))
    return checks


def _mirror_batches(sync: LakehouseSync, table: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The mirror's rows in the Postgres table's columns and types (a missing mirror is empty)."""
    try:
        snapshot = open_source(sync.mirror_uri(table), storage_options=sync.storage_options)
    except SourceMissing:
        return
    for batch in read_batches(snapshot):
        yield batch.select(schema.names).cast(schema)


def _compare_streams(
    label: str, schema: pa.Schema, postgres: Batches, mirror: Batches, keys: list[str]
) -> MirrorCheck:
    """Bucket fingerprints of both sides; on a difference, the differing buckets' rows compared
    key by key."""
    in_postgres, in_mirror = _fingerprints(postgres(), keys), _fingerprints(mirror(), keys)
    postgres_rows, mirror_rows = in_postgres.total().rows, in_mirror.total().rows
    if in_postgres.total() == in_mirror.total():
        return MirrorCheck(table=label, postgres_rows=postgres_rows, mirror_rows=mirror_rows)
    differing = in_postgres.differing(in_mirror, limit=SAMPLE_BUCKETS)
    check = _compare(
        label,
        _rows_in(postgres(), schema, keys, differing),
        _rows_in(mirror(), schema, keys, differing),
        keys,
    )
    return replace(check, postgres_rows=postgres_rows, mirror_rows=mirror_rows)


def _fingerprints(batches: Iterator[pa.RecordBatch], keys: list[str]) -> BucketFingerprints:
    found = BucketFingerprints(BUCKETS)
    for batch in batches:
        frame = _frame(batch)
        found.add(_key_hashes(frame, keys), _row_hashes(frame))
    return found


def _rows_in(
    batches: Iterator[pa.RecordBatch], schema: pa.Schema, keys: list[str], wanted: list[int]
) -> pa.Table:
    """The rows of the `wanted` buckets."""
    targets = np.array(wanted, dtype=np.intp)
    kept: list[pa.RecordBatch] = []
    for batch in batches:
        buckets = BucketFingerprints(BUCKETS).bucket_of(_key_hashes(_frame(batch), keys))
        chosen = np.flatnonzero(np.isin(buckets, targets))
        if len(chosen):
            kept.append(batch.take(pa.array(chosen)))
    return pa.Table.from_batches(kept, schema=schema)


def _frame(batch: pa.RecordBatch) -> pl.DataFrame:
    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _key_hashes(frame: pl.DataFrame, keys: list[str]) -> np.ndarray:
    return frame.select(pl.struct(keys).hash(seed=_SEED)).to_series().to_numpy()


def _row_hashes(frame: pl.DataFrame) -> np.ndarray:
    return frame.select(pl.struct(frame.columns).hash(seed=_SEED)).to_series().to_numpy()


def _compare(label: str, postgres: pa.Table, mirror: pa.Table, keys: list[str]) -> MirrorCheck:
    """Two small tables (the rows of a few buckets) compared key by key."""
    left = _hashed(postgres, keys)
    right = _hashed(mirror.cast(postgres.schema), keys)
    joined = left.join(right, on=keys, how="full", suffix="_m", coalesce=True, nulls_equal=True)
    missing = joined.filter(pl.col("__hash_m").is_null())
    extra = joined.filter(pl.col("__hash").is_null())
    changed = joined.filter(
        pl.col("__hash").is_not_null()
        & pl.col("__hash_m").is_not_null()
        & (pl.col("__hash") != pl.col("__hash_m"))
    )
    return MirrorCheck(
        table=label,
        postgres_rows=postgres.num_rows,
        mirror_rows=mirror.num_rows,
        missing=_sample(missing, keys),
        extra=_sample(extra, keys),
        changed=_sample(changed, keys),
    )


def _hashed(table: pa.Table, keys: list[str]) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    values = [c for c in frame.columns]
    return frame.select(*keys, pl.struct(values).hash(seed=_SEED).alias("__hash"))


def _sample(frame: pl.DataFrame, keys: list[str]) -> list[str]:
    rows = frame.select(keys).head(SAMPLE_KEYS).rows()
    return [", ".join(f"{k}={v!r}" for k, v in zip(keys, row, strict=True)) for row in rows]
