"""Reducing raw Change Data Feed rows to one net change per key (pure polars, no I/O).

delta-rs returns CDF rows unordered and overwrites insert-before-delete: the order must not matter.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from reverse_etl_assets.errors import DataError
from reverse_etl_assets.transform.changes import net_changes


def cdf(rows: list[tuple[int | None, str | None, str, int]]) -> pa.Table:
    ids, values, kinds, versions = zip(*rows, strict=True) if rows else ((), (), (), ())
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "v": pa.array(values, pa.string()),
            "_change_type": pa.array(kinds, pa.string()),
            "_commit_version": pa.array(versions, pa.int64()),
        }
    )


def reduce(rows: list[tuple[int | None, str | None, str, int]], **kw: object) -> tuple[dict, list]:
    net = net_changes(
        cdf(rows), key=("id",), columns=["id", "v"], timeseries_key=None, table="t", **kw
    )  # type: ignore[arg-type]
    upserts = dict(
        zip(net.upserts.column("id").to_pylist(), net.upserts.column("v").to_pylist(), strict=True)
    )
    return upserts, sorted(net.deletes.column("id").to_pylist())


def test_overwrite_inserts_before_deletes_keeps_the_new_rows() -> None:
    rows = [
        (1, "new1", "insert", 4),
        (2, "new2", "insert", 4),
        (1, "old1", "delete", 4),
        (2, "old2", "delete", 4),
        (3, "old3", "delete", 4),
    ]
    assert reduce(rows) == ({1: "new1", 2: "new2"}, [3])


def test_unordered_versions_last_change_wins() -> None:
    rows = [
        (1, None, "delete", 3),
        (1, "a", "insert", 1),
        (2, "b", "insert", 2),
        (2, "b", "update_preimage", 3),
        (2, "B", "update_postimage", 3),
        (3, "c", "delete", 1),
        (3, "c2", "insert", 5),
    ]
    assert reduce(rows) == ({2: "B", 3: "c2"}, [1])


def test_preimages_never_land() -> None:
    rows = [(5, "old", "update_preimage", 2), (5, "new", "update_postimage", 2)]
    assert reduce(rows) == ({5: "new"}, [])


def test_two_new_rows_for_one_key_in_one_version_fail() -> None:
    with pytest.raises(DataError, match=r"\{'id': 7\} x2 in version 3"):
        reduce([(7, "a", "insert", 3), (7, "b", "insert", 3)])


def test_same_key_in_different_versions_is_not_a_duplicate() -> None:
    assert reduce([(7, "a", "insert", 3), (7, "b", "insert", 4)]) == ({7: "b"}, [])


def test_null_keys_are_counted_not_applied() -> None:
    net = net_changes(
        cdf([(None, "x", "insert", 1), (1, "a", "insert", 1)]),
        key=("id",),
        columns=["id", "v"],
        timeseries_key=None,
        table="t",
    )
    assert net.null_key_rows == 1 and net.upserts.num_rows == 1


def test_null_key_rows_count_what_arrives_minus_what_leaves() -> None:
    rows = [
        (None, "x", "insert", 1),
        (None, "y", "insert", 1),
        (None, "x", "update_preimage", 2),  # an update of a NULL-key row: still one row
        (None, "x2", "update_postimage", 2),
        (None, "y", "delete", 3),
        (None, "z", "update_preimage", 3),  # its key set: it leaves the NULL-key rows
        (4, "z", "update_postimage", 3),
    ]
    net = net_changes(cdf(rows), key=("id",), columns=["id", "v"], timeseries_key=None, table="t")
    assert net.null_key_rows == 0 and net.upserts.column("id").to_pylist() == [4]


def test_timeseries_key_resolves_duplicates_within_a_version() -> None:
    changes = pa.table(
        {
            "id": pa.array([1, 1, 1], pa.int64()),
            "at": pa.array([5, 9, 7], pa.int64()),
            "_change_type": ["insert", "insert", "insert"],
            "_commit_version": pa.array([2, 2, 2], pa.int64()),
        }
    )
    net = net_changes(changes, key=("id",), columns=["id", "at"], timeseries_key="at", table="t")
    assert net.upserts.to_pylist() == [{"id": 1, "at": 9}]


def test_a_key_only_left_as_a_preimage_is_deleted() -> None:
    # UPDATE SET id = id + 1000 WHERE id < 3: the old keys appear only as preimages.
    rows = [
        (1, "a", "update_preimage", 2),
        (1001, "a", "update_postimage", 2),
        (2, "b", "update_preimage", 2),
        (1002, "b", "update_postimage", 2),
    ]
    assert reduce(rows) == ({1001: "a", 1002: "b"}, [1, 2])


def test_a_key_moved_away_and_back_lands_at_its_last_place() -> None:
    rows = [
        (1001, "a", "update_postimage", 3),
        (1001, "a", "update_preimage", 4),
        (1, "a", "update_preimage", 3),
        (1, "a", "update_postimage", 4),
    ]
    assert reduce(rows) == ({1: "a"}, [1001])


def test_keys_swapped_in_one_version_both_stay() -> None:
    rows = [
        (1, "one", "update_preimage", 2),
        (2, "two", "update_preimage", 2),
        (2, "one", "update_postimage", 2),
        (1, "two", "update_postimage", 2),
    ]
    assert reduce(rows) == ({1: "two", 2: "one"}, [])
