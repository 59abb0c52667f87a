"""A lakehouse mirror compared with its Postgres table as two streams of batches: equal streams
pass whatever their order and batching; a changed, missing or extra row is named by key."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from reverse_etl_assets.pipelines.postgres_to_delta.verify import (
    SAMPLE_KEYS,
    MirrorCheck,
    _compare_streams,
)

SCHEMA = pa.schema([("id", pa.int64()), ("v", pa.string()), ("f", pa.float64())])


def rows(n: int) -> pa.Table:
    return pa.table(
        {
            "id": range(n),
            "v": [f"v{i}" if i % 7 else None for i in range(n)],
            "f": [i / 3 for i in range(n)],
        },
        schema=SCHEMA,
    )


def compare(postgres: pa.Table, mirror: pa.Table) -> MirrorCheck:
    """Postgres in batches of 1,000 rows, the mirror in batches of 333."""
    return _compare_streams(
        "public.t",
        SCHEMA,
        lambda: iter(postgres.to_batches(max_chunksize=1000)),
        lambda: iter(mirror.to_batches(max_chunksize=333)),
        ["id"],
    )


def test_equal_streams_in_any_order_and_batching_pass() -> None:
    table = rows(10_000)
    check = compare(table, table.take(pa.array(range(9_999, -1, -1))))
    assert check.content_matches and check.postgres_rows == check.mirror_rows == 10_000


def test_a_changed_a_missing_and_an_extra_row_are_named() -> None:
    table = rows(1_000)
    kept = table.filter(pc.not_equal(table["id"], 8))
    kept = kept.set_column(
        1, "v", pc.if_else(pc.equal(kept["id"], 7), pa.scalar("tampered"), kept["v"])
    )
    extra = pa.table({"id": [5_000], "v": ["x"], "f": [0.0]}, schema=SCHEMA)
    check = compare(table, pa.concat_tables([kept, extra]))
    assert not check.content_matches
    assert (check.missing, check.extra, check.changed) == (["id=8"], ["id=5000"], ["id=7"])
    assert (check.postgres_rows, check.mirror_rows) == (1_000, 1_000)
    assert "missing in the mirror: id=8" in check.describe()


def test_many_differences_are_sampled_from_a_few_buckets() -> None:
    table = rows(50_000)
    check = compare(table, table.filter(pc.equal(pc.bit_wise_and(table["id"], 1), 1)))
    assert (check.postgres_rows, check.mirror_rows) == (50_000, 25_000)
    assert len(check.missing) == SAMPLE_KEYS and not check.extra and not check.changed
    assert all(int(key.removeprefix("id=")) % 2 == 0 for key in check.missing)
