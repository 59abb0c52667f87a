"""Prove a synced table equals its Delta source at the checkpointed version.

Each side is hashed where it lives: Postgres sums a hash of each row (`fingerprint.row_hash`, its
columns' own hash functions combined) in one scan, while the Delta rows, prepared as a sync
prepares them, are streamed and hashed with the same functions here; both sides only sum row
hashes. Only when the sums differ are both summed again
per key bucket, and the rows of a few differing buckets fetched from both, to name sample keys
and what differs about them.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import polars as pl
import psycopg
import pyarrow as pa
from psycopg import sql

from reverse_etl_assets.delta.reader import SourceSnapshot, open_source, read_batches
from reverse_etl_assets.errors import SourceError, SpecError
from reverse_etl_assets.postgres import ddl, fingerprint, state
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.schema.delta_to_postgres import PgColumn, key_columns, pg_columns
from reverse_etl_assets.spec import SyncedTable
from reverse_etl_assets.transform import pg_hash
from reverse_etl_assets.transform.buckets import HASH_MODULUS, BucketFingerprints, Fingerprint
from reverse_etl_assets.transform.cleaning import BatchPreparer

SAMPLE_KEYS = 5
# Key buckets compared when the totals differ (a power of two). Postgres groups by them in about
# twice the time of the total; more buckets made its hash aggregate slower, fewer made each
# bucket's rows, fetched to name keys, more numerous.
BUCKETS = 4096
# Buckets whose rows are fetched from both sides to name keys: enough for SAMPLE_KEYS, bounded.
SAMPLE_BUCKETS = 4
HASH_THREADS = 2

Kind = Literal["changed", "missing", "extra"]
T = TypeVar("T")
_KIND_WORDS = {"changed": "changed", "missing": "missing in Postgres", "extra": "extra in Postgres"}


@dataclass(frozen=True, kw_only=True)
class Difference:
    """One differing key: `changed` (other values), `missing` (only in Delta) or `extra` (only
    in Postgres)."""

    kind: Kind
    key: dict[str, Any]

    def describe(self) -> str:
        """`{'id': 3} (missing in Postgres)`."""
        return f"{self.key} ({_KIND_WORDS[self.kind]})"


@dataclass(frozen=True, kw_only=True)
class Verification:
    """The outcome of comparing Postgres with Delta at one version."""

    name: str
    version: int
    postgres_rows: int
    delta_rows: int
    postgres_hash: str
    delta_hash: str
    differing_keys: tuple[dict[str, Any], ...]
    seconds: float
    differences: tuple[Difference, ...] = ()

    @property
    def rows_match(self) -> bool:
        """Same number of rows."""
        return self.postgres_rows == self.delta_rows

    @property
    def content_matches(self) -> bool:
        """Same rows, whatever their order."""
        return self.rows_match and self.postgres_hash == self.delta_hash

    def describe(self) -> str:
        """One line for people."""
        if self.content_matches:
            return (
                f"{self.name}: Postgres equals Delta version {self.version} "
                f"({self.postgres_rows:,} rows, hash {self.postgres_hash})"
            )
        keys = ", ".join(d.describe() for d in self.differences) or "none found"
        return (
            f"{self.name}: Postgres differs from Delta version {self.version}: "
            f"{self.postgres_rows:,} rows vs {self.delta_rows:,}, hash {self.postgres_hash} vs "
            f"{self.delta_hash}; differing keys (sample): {keys}. "
            f"Rebuild with `reverse-etl sync {self.name} --full-refresh`"
        )


def verify_table(table: SyncedTable, dsn: str) -> Verification:
    """Compare the synced table with the source at its checkpoint version."""
    started = time.monotonic()
    with connect(dsn, autocommit=True) as conn:
        stored = state.read_state(conn, table.name) if _has_state(conn) else None
        if stored is None or stored.last_synced_version is None:
            raise SpecError(
                f"synced table {table.name!r} has no checkpoint to verify: sync it first"
            )
        source = open_source(
            table.source_uri,
            storage_options=table.storage_options,
            version=stored.last_synced_version,
        )
        if source.table_id != stored.table_id:
            raise SourceError(
                f"synced table {table.name!r}: the source was recreated since version "
                f"{stored.last_synced_version} was synced; sync it again before verifying"
            )
        columns = pg_columns(source.schema, table=table.name)
        keys = key_columns(columns, table.primary_key)
        target = ddl.qualified(table.pg_schema, table.pg_table)
        # Postgres scans and hashes on its own core while this process hashes the Delta rows.
        with ThreadPoolExecutor(max_workers=1) as pool, _json_hasher(dsn, columns) as hash_json:
            in_postgres = pool.submit(_read_total, dsn, target, columns)
            delta = _delta_total(table, source, columns, keys, hash_json)
            postgres = in_postgres.result()
            differences: tuple[Difference, ...] = ()
            if postgres != delta:
                differences = _sample_differences(
                    dsn, conn, pool, table, source, columns, keys, target, hash_json
                )
    return Verification(
        name=table.name,
        version=stored.last_synced_version,
        postgres_rows=postgres.rows,
        delta_rows=delta.rows,
        postgres_hash=postgres.hex(),
        delta_hash=delta.hex(),
        differing_keys=tuple(d.key for d in differences),
        differences=differences,
        seconds=time.monotonic() - started,
    )


def _has_state(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('reverse_etl.synced_tables') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _read_total(dsn: str, target: sql.Composable, columns: tuple[PgColumn, ...]) -> Fingerprint:
    with connect(dsn, autocommit=True) as conn:
        return fingerprint.read_total(conn, target, columns)


def _read_buckets(
    dsn: str, target: sql.Composable, columns: tuple[PgColumn, ...], keys: tuple[PgColumn, ...]
) -> BucketFingerprints:
    with connect(dsn, autocommit=True) as conn:
        return fingerprint.read_buckets(conn, target, columns, keys, BUCKETS)


@contextlib.contextmanager
def _json_hasher(dsn: str, columns: tuple[PgColumn, ...]) -> Iterator[pg_hash.JsonHasher]:
    """How the Delta side hashes JSON: by Postgres, over a connection of its own shared by the
    hashing threads, when the table has jsonb columns (putting JSON in jsonb's form in Python
    took 3-4x a snapshot sync of a table of small structs)."""
    if not any(c.ddl == "jsonb" for c in columns):
        yield pg_hash.hash_json_here
        return
    lock = threading.Lock()
    with connect(dsn, autocommit=True) as conn:

        def hash_json(texts: pa.Array, seed: int) -> np.ndarray:
            with lock:
                return fingerprint.hash_json_texts(conn, texts, seed)

        yield hash_json


# --- the Delta side ---------------------------------------------------------------------------


def _delta_total(
    table: SyncedTable,
    source: SourceSnapshot,
    columns: tuple[PgColumn, ...],
    keys: tuple[PgColumn, ...],
    hash_json: pg_hash.JsonHasher,
) -> Fingerprint:
    """Row count and hash sum of the source rows as a sync would land them. Without a timeseries
    key no key is hashed: buckets are only needed, in a second read, when the sums differ."""
    if table.timeseries_key is not None:
        return _hash_delta(table, source, columns, keys, hash_json).total()
    rows = total = 0
    for hashes in _hashed_chunks(
        table,
        source,
        columns,
        lambda chunk: pg_hash.row_hashes(chunk, columns, hash_json=hash_json),
    ):
        rows += len(hashes)
        total = (total + int(hashes.sum(dtype=np.uint64))) % HASH_MODULUS
    return Fingerprint(rows=rows, total=total)


def _hash_delta(
    table: SyncedTable,
    source: SourceSnapshot,
    columns: tuple[PgColumn, ...],
    keys: tuple[PgColumn, ...],
    hash_json: pg_hash.JsonHasher,
) -> BucketFingerprints:
    """Bucket fingerprints of the source rows as a sync would land them."""
    buckets = BucketFingerprints(BUCKETS)
    if table.timeseries_key is None:

        def hashed(chunk: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
            return (
                pg_hash.key_hashes(chunk, keys, hash_json=hash_json),
                pg_hash.row_hashes(chunk, columns, hash_json=hash_json),
            )

        for key_hashes, row_hashes in _hashed_chunks(table, source, columns, hashed):
            buckets.add(key_hashes, row_hashes)
        return buckets
    # Latest row per key: that needs every row's key hash, timestamp and row hash (24 bytes a
    # row, not the rows themselves) before the buckets can be summed.
    parts = [
        _hashes_frame(chunk, columns, keys, table.timeseries_key, hash_json)
        for chunk in _wire_chunks(table, source, columns)
    ]
    if parts:
        latest = _keep_latest(pl.concat(parts))
        buckets.add(latest["k"].to_numpy(), latest["h"].to_numpy())
    return buckets


def _hashed_chunks(
    table: SyncedTable,
    source: SourceSnapshot,
    columns: tuple[PgColumn, ...],
    hashed: Callable[[pa.RecordBatch], T],
) -> Iterator[T]:
    """`hashed` of each wire chunk, in order. numpy releases the GIL inside each operation: two
    chunks hash side by side, which uses the core Postgres leaves idle once its own scan is done."""
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        pending: collections.deque[Future[T]] = collections.deque()
        for chunk in _wire_chunks(table, source, columns):
            pending.append(pool.submit(hashed, chunk))
            if len(pending) > HASH_THREADS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _wire_chunks(
    table: SyncedTable, source: SourceSnapshot, columns: tuple[PgColumn, ...]
) -> Iterator[pa.RecordBatch]:
    """The source rows prepared as a sync prepares them (NULL keys dropped, NUL-byte policy
    applied, converted for Postgres), read two batches ahead in a thread (parquet decoding releases
    the GIL). The reader's batches are hashed as they come: at 8x their size the hashing's
    temporaries outgrew the CPU caches and it ran slower (measured)."""
    preparer = BatchPreparer(
        columns, key=table.primary_key, policy=table.on_invalid_characters, table=table.name
    )
    return _read_ahead(preparer.stream(read_batches(source)))


def _read_ahead(batches: Iterable[pa.RecordBatch], depth: int = 2) -> Iterator[pa.RecordBatch]:
    """`batches`, produced by a thread up to `depth` ahead; its error is raised here."""
    handoff: queue.Queue[tuple[pa.RecordBatch | None, BaseException | None]] = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                handoff.put((batch, None))
            handoff.put((None, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            handoff.put((None, exc))

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            batch, error = handoff.get()
            if error is not None:
                raise error
            if batch is None:
                return
            yield batch
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                handoff.get(timeout=0.1)
        worker.join()


def _hashes_frame(
    chunk: pa.RecordBatch,
    columns: tuple[PgColumn, ...],
    keys: tuple[PgColumn, ...],
    timeseries_key: str,
    hash_json: pg_hash.JsonHasher,
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "k": pl.Series(pg_hash.key_hashes(chunk, keys, hash_json=hash_json), dtype=pl.UInt64),
            "t": pl.Series(chunk.column(timeseries_key)),
            "h": pl.Series(
                pg_hash.row_hashes(chunk, columns, hash_json=hash_json), dtype=pl.UInt64
            ),
        }
    )


def _keep_latest(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows holding each key's greatest timestamp (NULL only when all are; ties all stay),
    as the sync's `keep_latest` leaves them: a float NaN is greatest, as Postgres orders it."""
    t = pl.col("t")
    latest = (t.nan_max() if frame.schema["t"].is_float() else t.max()).over("k")
    return frame.filter((pl.col("t") == latest) | latest.is_null())


# --- naming the differences -------------------------------------------------------------------


def _sample_differences(
    dsn: str,
    conn: psycopg.Connection,
    pool: ThreadPoolExecutor,
    table: SyncedTable,
    source: SourceSnapshot,
    columns: tuple[PgColumn, ...],
    keys: tuple[PgColumn, ...],
    target: sql.Composable,
    hash_json: pg_hash.JsonHasher,
) -> tuple[Difference, ...]:
    """Keys that differ, from the first few buckets whose fingerprints differ (both sides
    summed per bucket at once, Postgres on the pool's thread)."""
    in_postgres = pool.submit(_read_buckets, dsn, target, columns, keys)
    delta = _hash_delta(table, source, columns, keys, hash_json)
    differing = in_postgres.result().differing(delta, limit=SAMPLE_BUCKETS)
    if not differing:
        return ()
    postgres_rows = {
        k: (h, values)
        for k, h, values in fingerprint.read_bucket_rows(
            conn, target, columns, keys, BUCKETS, differing
        )
    }
    delta_rows = _delta_bucket_rows(table, source, columns, keys, differing, hash_json)
    found: list[Difference] = []
    for k, (h, values) in postgres_rows.items():
        if k not in delta_rows:
            found.append(Difference(kind="extra", key=values))
        elif delta_rows[k][0] != h:
            found.append(Difference(kind="changed", key=values))
    found += [
        Difference(kind="missing", key=values)
        for k, (_, values) in delta_rows.items()
        if k not in postgres_rows
    ]
    found.sort(key=lambda d: (d.kind, str(d.key)))
    return tuple(found[:SAMPLE_KEYS])


def _delta_bucket_rows(
    table: SyncedTable,
    source: SourceSnapshot,
    columns: tuple[PgColumn, ...],
    keys: tuple[PgColumn, ...],
    wanted: list[int],
    hash_json: pg_hash.JsonHasher,
) -> dict[int, tuple[int, dict[str, Any]]]:
    """Key hash -> (row hash, key values) of the source rows in the `wanted` buckets."""
    targets = np.array(wanted, dtype=np.uint64)
    names = [c.name for c in keys]
    parts: list[pl.DataFrame] = []
    values: list[dict[str, Any]] = []
    for chunk in _wire_chunks(table, source, columns):
        key_hashes = pg_hash.key_hashes(chunk, keys, hash_json=hash_json)
        chosen = np.flatnonzero(np.isin(key_hashes & np.uint64(BUCKETS - 1), targets))
        if not len(chosen):
            continue
        rows = chunk.take(pa.array(chosen))
        frame = pl.DataFrame(
            {
                "k": pl.Series(key_hashes[chosen], dtype=pl.UInt64),
                "h": pl.Series(
                    pg_hash.row_hashes(rows, columns, hash_json=hash_json), dtype=pl.UInt64
                ),
                "i": pl.int_range(len(values), len(values) + len(chosen), eager=True),
            }
        )
        if table.timeseries_key is not None:
            frame = frame.with_columns(t=pl.Series(rows.column(table.timeseries_key)))
        parts.append(frame)
        key_values = zip(*(rows.column(n).to_pylist() for n in names), strict=True)
        values += [dict(zip(names, v, strict=True)) for v in key_values]
    if not parts:
        return {}
    found = pl.concat(parts)
    if table.timeseries_key is not None:
        found = _keep_latest(found)
    return {int(k): (int(h), values[i]) for k, h, i in found.select("k", "h", "i").iter_rows()}
