"""The snapshot's fan-out: one read of a table feeds the mirror and history writers side by side;
an error anywhere reaches every writer, so none commits a partial table."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest

from reverse_etl_assets.pipelines.postgres_to_delta.snapshot import fan_out

SCHEMA = pa.schema([("id", pa.int64())])


def batches(n: int, fail_at: int | None = None) -> Iterator[pa.RecordBatch]:
    for i in range(n):
        if i == fail_at:
            raise OSError("connection lost mid-copy")
        yield pa.record_batch([pa.array([i], pa.int64())], schema=SCHEMA)


def collect(into: list[int]):  # a sink that "commits" only when its reader ends cleanly
    def sink(reader: pa.RecordBatchReader) -> None:
        seen = [row for batch in reader for row in batch.column(0).to_pylist()]
        into.extend(seen)

    return sink


def test_every_sink_gets_every_batch() -> None:
    a: list[int] = []
    b: list[int] = []
    fan_out(batches(50), SCHEMA, [collect(a), collect(b)])
    assert a == b == list(range(50))


def test_a_failing_source_fails_every_sink() -> None:
    a: list[int] = []
    b: list[int] = []
    with pytest.raises(OSError, match="connection lost"):
        fan_out(batches(50, fail_at=20), SCHEMA, [collect(a), collect(b)])
    assert a == b == []  # neither reached a clean end


def test_a_failing_sink_fails_the_others() -> None:
    b: list[int] = []

    def broken(reader: pa.RecordBatchReader) -> None:
        next(iter(reader))
        raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        fan_out(batches(200), SCHEMA, [broken, collect(b)])
    assert b == []
