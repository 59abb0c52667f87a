"""The Change Data Feed read file by file equals what delta-rs reads, on every kind of commit
(append, update, delete, overwrite, merge, compaction, partitions, an added column)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from reverse_etl_assets.delta import cdf_columns, change_feed, preimages, reader
from reverse_etl_assets.delta.cdf_columns import PAIRED_POSTIMAGE
from reverse_etl_assets.delta.log import RangeUnavailable
from reverse_etl_assets.delta.reader import open_source
from reverse_etl_assets.errors import SourceError


def feed(src: Path, *, start: int, engine: bool) -> list[tuple[object, ...]]:
    source = open_source(str(src), storage_options={})
    names = [*source.schema.names, cdf_columns.CHANGE_TYPE, cdf_columns.COMMIT_VERSION]
    if engine:
        batches = change_feed._engine_changes(
            source.table, start=start, end=source.version, schema=source.schema, names=names
        )
    else:
        batches = change_feed.stream_changes(
            source.table,
            uri=str(src),
            storage_options={},
            start=start,
            end=source.version,
            schema=source.schema,
        )
    rows = [tuple(r.values()) for b in batches for r in b.to_pylist()]
    return sorted(rows, key=repr)


def table(ids: list[int], part: str, tag: str) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "part": pa.array([part] * len(ids)),
            "v": pa.array([f"{tag}{i}" for i in ids]),
        }
    )


@pytest.mark.parametrize("partitioned", [False, True])
def test_the_streamed_feed_equals_delta_rs(tmp_path: Path, partitioned: bool) -> None:
    src = tmp_path / "src"
    by = ["part"] if partitioned else None
    config = {"delta.enableChangeDataFeed": "true"}
    write_deltalake(
        str(src), table(list(range(50)), "a", "v"), partition_by=by, configuration=config
    )
    write_deltalake(str(src), table(list(range(50, 60)), "b", "v"), mode="append")
    DeltaTable(str(src)).update(updates={"v": "'u'"}, predicate="id < 5 OR id = 55")
    DeltaTable(str(src)).delete("id >= 45 AND id < 52")
    DeltaTable(str(src)).merge(
        table([1, 70], "b", "m"), predicate="s.id = t.id", source_alias="s", target_alias="t"
    ).when_matched_update_all().when_not_matched_insert_all().execute()
    DeltaTable(str(src)).optimize.compact()
    write_deltalake(str(src), table(list(range(10)), "a", "o"), mode="overwrite", partition_by=by)
    wider = table([80], "a", "w").append_column("score", pa.array([1.5]))
    write_deltalake(str(src), wider, mode="append", schema_mode="merge")
    streamed = feed(src, start=1, engine=False)
    assert streamed == feed(src, start=1, engine=True)
    assert len(streamed) > 60 and {r[-2] for r in streamed} == {
        "insert",
        "delete",
        "update_preimage",
        "update_postimage",
    }


def test_a_missing_file_is_an_unavailable_range(tmp_path: Path) -> None:
    src = tmp_path / "src"
    config = {"delta.enableChangeDataFeed": "true"}
    write_deltalake(str(src), table(list(range(5)), "a", "v"), configuration=config)
    write_deltalake(str(src), table([9], "a", "v"), mode="append")
    DeltaTable(str(src)).optimize.compact()
    DeltaTable(str(src)).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    with pytest.raises(RangeUnavailable, match="change data of version 1"):
        feed(src, start=1, engine=False)


def test_partition_values_that_need_escaping_are_read(tmp_path: Path) -> None:
    # delta-rs 1.6's own CDF reader cannot find these change files; the log's paths are decoded.
    src = tmp_path / "src"
    rows = {"id": pa.array([1, 2, 3], pa.int64()), "part": ["a b", "x:y/z", "é%25"]}
    config = {"delta.enableChangeDataFeed": "true"}
    write_deltalake(str(src), pa.table(rows), partition_by=["part"], configuration=config)
    write_deltalake(
        str(src), pa.table({"id": pa.array([4], pa.int64()), "part": ["a b"]}), mode="append"
    )
    DeltaTable(str(src)).update(updates={"id": "id + 10"}, predicate="id < 3")
    DeltaTable(str(src)).delete("id = 3")
    assert feed(src, start=1, engine=False) == sorted(
        [
            (4, "a b", "insert", 1),
            (1, "a b", "update_preimage", 2),
            (11, "a b", "update_postimage", 2),
            (2, "x:y/z", "update_preimage", 2),
            (12, "x:y/z", "update_postimage", 2),
            (3, "é%25", "delete", 3),
        ],
        key=repr,
    )


def test_a_timestamp_partition_is_read(tmp_path: Path) -> None:
    """delta-rs writes a UTC timestamp's partition value without a zone (and its own CDF
    reader cannot find the escaped change file)."""
    src = tmp_path / "src"
    day = pa.array([datetime(2024, 1, 1, tzinfo=UTC)] * 3, pa.timestamp("us", tz="UTC"))
    rows = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "day": day, "v": ["a", "b", "c"]})
    write_deltalake(
        str(src),
        rows,
        partition_by=["day"],
        configuration={"delta.enableChangeDataFeed": "true"},
    )
    DeltaTable(str(src)).update(updates={"v": "'u'"}, predicate="id = 2")
    changed = feed(src, start=1, engine=False)
    assert {(r[0], r[1], r[2]) for r in changed} == {
        (2, datetime(2024, 1, 1, tzinfo=UTC), "b"),
        (2, datetime(2024, 1, 1, tzinfo=UTC), "u"),
    }


def keyed_feed(src: Path, key: tuple[str, ...]) -> list[tuple[object, ...]]:
    source = open_source(str(src), storage_options={})
    batches = change_feed.stream_changes(
        source.table,
        uri=str(src),
        storage_options={},
        start=1,
        end=source.version,
        schema=source.schema,
        key=key,
    )
    return sorted((tuple(r.values()) for b in batches for r in b.to_pylist()), key=repr)


def cdf_table(tmp_path: Path, rows: pa.Table, *, partition_by: list[str] | None = None) -> Path:
    src = tmp_path / "src"
    config = {"delta.enableChangeDataFeed": "true"}
    write_deltalake(str(src), rows, partition_by=partition_by, configuration=config)
    return src


def test_update_preimages_paired_by_their_key_are_left_out(tmp_path: Path) -> None:
    src = cdf_table(tmp_path, table(list(range(20)), "a", "v"))
    DeltaTable(str(src)).update(updates={"v": "'u'"}, predicate="id < 5")
    rows = keyed_feed(src, ("id",))
    kinds = [r[-2] for r in rows]
    assert kinds.count(PAIRED_POSTIMAGE) == 5  # each updates a row that was there
    assert "update_preimage" not in kinds and "update_postimage" not in kinds
    # Without a key the feed is whole.
    assert [r[-2] for r in feed(src, start=1, engine=False)].count("update_preimage") == 5


def test_a_preimage_whose_key_moved_is_kept(tmp_path: Path) -> None:
    # UPDATE SET id = id + 100: the old keys appear only as preimages, which delete them.
    src = cdf_table(tmp_path, table(list(range(6)), "a", "v"))
    DeltaTable(str(src)).update(updates={"id": "id + 100"}, predicate="id < 2")
    DeltaTable(str(src)).update(updates={"v": "'u'"}, predicate="id = 3")
    rows = keyed_feed(src, ("id",))
    preimages = sorted(r[0] for r in rows if r[-2] == "update_preimage")
    assert preimages == [0, 1]
    # The moved rows' postimages add rows under new keys; the other updates a row in place.
    assert sorted(r[0] for r in rows if r[-2] == "update_postimage") == [100, 101]
    assert [r[0] for r in rows if r[-2] == PAIRED_POSTIMAGE] == [3]


def test_preimages_pair_on_the_whole_key_and_never_on_nulls(tmp_path: Path) -> None:
    rows = pa.table(
        {
            "a": pa.array([1, 1, 2, None], pa.int64()),
            "b": pa.array(["x", "y", "x", "n"]),
            "v": pa.array(["v"] * 4),
        }
    )
    src = cdf_table(tmp_path, rows)
    # (1, 'x') becomes (1, 'z'): same `a`, another key; the NULL-key row is updated in place.
    DeltaTable(str(src)).update(updates={"b": "'z'"}, predicate="a = 1 AND b = 'x'")
    DeltaTable(str(src)).update(updates={"v": "'u'"}, predicate="a IS NULL OR a = 2")
    kept = [(r[0], r[1]) for r in keyed_feed(src, ("a", "b")) if r[-2] == "update_preimage"]
    assert sorted(kept, key=repr) == [(1, "x"), (None, "n")]


def test_a_partition_column_key_keeps_every_preimage(tmp_path: Path) -> None:
    src = cdf_table(tmp_path, table(list(range(4)), "a", "v"), partition_by=["part"])
    DeltaTable(str(src)).update(updates={"v": "'u'"}, predicate="id < 2")
    rows = keyed_feed(src, ("part",))
    assert [r[-2] for r in rows].count("update_preimage") == 2


def test_a_file_too_large_to_pair_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = cdf_table(tmp_path, table(list(range(20)), "a", "v"))
    DeltaTable(str(src)).update(updates={"v": "'u'"}, predicate="id < 5")
    monkeypatch.setattr(preimages, "BUDGET_BYTES", 100)
    assert [r[-2] for r in keyed_feed(src, ("id",))].count("update_preimage") == 5


def test_rows_of_touched_keys_stream_in_batches_and_a_vacuumed_file_is_a_source_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timeseries range that removed rows re-reads the touched keys' rows from the source:
    a key may hold any number of rows, so they come batch by batch, never as one table."""
    src = tmp_path / "ts"
    rows = pa.table({"id": [i % 3 for i in range(300)], "at": list(range(300))})
    write_deltalake(src, rows)
    write_deltalake(src, pa.table({"id": [7], "at": [0]}), mode="append")
    monkeypatch.setattr(reader, "BATCH_ROWS", 40)
    source = open_source(str(src), storage_options={})
    batches = reader.read_rows_with_keys(source, pa.table({"id": [0, 7]}))
    assert not isinstance(batches, pa.Table)
    got = list(batches)
    assert max(b.num_rows for b in got) <= 40 and len(got) >= 3
    assert sorted(r["at"] for b in got for r in b.to_pylist() if r["id"] == 0) == list(
        range(0, 300, 3)
    )
    assert [r["at"] for b in got for r in b.to_pylist() if r["id"] == 7] == [0]
    for data_file in src.glob("*.parquet"):
        data_file.unlink()  # vacuumed under the pinned version
    with pytest.raises(SourceError, match="sync again"):
        list(reader.read_rows_with_keys(source, pa.table({"id": [0]})))
