"""The latest row per key of a stream too large to hold: each row's key hash, timestamp and row
hash spilled to local files by the key hash's top bits, then each file settled on its own, so
memory holds one file's share of the rows (a 64th) instead of all of them."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np
import polars as pl
import pyarrow as pa

from reverse_etl_assets.transform.buckets import BucketFingerprints

PARTITION_BITS = 6


class LatestPerKey:
    """Collect (key hash `k`, timestamp `t`, row hash `h`) frames; `buckets` then sums, per key
    bucket, the rows holding each key's greatest timestamp (NULL only when all are; ties all
    stay), as the sync's `keep_latest` leaves them. A context manager: the files go at exit."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="reverse_etl_verify_")
        self._writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}

    def __enter__(self) -> LatestPerKey:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close_writers()
        self._dir.cleanup()

    def add(self, frame: pl.DataFrame) -> None:
        """Spill a frame of `k` (UInt64), `t` and `h` (UInt64) to its partitions' files."""
        if frame.height == 0:
            return
        part = (frame["k"].to_numpy() >> np.uint64(64 - PARTITION_BITS)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        table = frame.to_arrow().take(pa.array(order))
        ordered = part[order]
        starts = np.flatnonzero(np.diff(ordered, prepend=-1))
        ends = [*starts[1:], len(ordered)]
        for start, end in zip(starts, ends, strict=True):
            self._writer(int(ordered[start]), table.schema).write_table(
                table.slice(start, end - start)
            )

    def buckets(self, buckets: int) -> BucketFingerprints:
        """The fingerprints of the latest rows, one partition file in memory at a time."""
        self._close_writers()
        found = BucketFingerprints(buckets)
        for path in sorted(Path(self._dir.name).glob("*.arrow")):
            with pa.memory_map(str(path)) as source:
                frame = pl.from_arrow(pa.ipc.open_file(source).read_all())
            assert isinstance(frame, pl.DataFrame)
            latest = keep_latest(frame)
            found.add(latest["k"].to_numpy(), latest["h"].to_numpy())
        return found

    def _writer(self, partition: int, schema: pa.Schema) -> pa.ipc.RecordBatchFileWriter:
        if partition not in self._writers:
            path = Path(self._dir.name) / f"{partition:02d}.arrow"
            self._writers[partition] = pa.ipc.new_file(str(path), schema)
        return self._writers[partition]

    def _close_writers(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def keep_latest(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows holding each key's greatest timestamp (NULL only when all are; ties all stay),
    as the sync's `keep_latest` leaves them: a float NaN is greatest, as Postgres orders it."""
    t = pl.col("t")
    latest = (t.nan_max() if frame.schema["t"].is_float() else t.max()).over("k")
    return frame.filter((t == latest) | latest.is_null())
