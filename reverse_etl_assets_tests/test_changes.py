"""Netting raw Change Data Feed rows to one change per key: the feed's batches prepared in Arrow,
staged in a real Postgres and netted there in SQL (the range never sits in the pipeline's memory).

delta-rs returns CDF rows unordered and overwrites insert-before-delete: the order must not matter.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from reverse_etl_assets.delta.cdf_columns import PAIRED_POSTIMAGE
from reverse_etl_assets.errors import DataError
from reverse_etl_assets.postgres import apply, change_stage
from reverse_etl_assets.schema.delta_to_postgres import pg_columns
from reverse_etl_assets.transform.changes import ChangePreparer

Row = tuple[Any, Any, str, int]


@pytest.fixture
def conn(pg_dsn: str) -> Any:
    with psycopg.connect(pg_dsn) as connection, connection.transaction(force_rollback=True):
        yield connection


def cdf(rows: list[Row], values: pa.DataType | None = None, name: str = "v") -> pa.RecordBatch:
    ids, vals, kinds, versions = zip(*rows, strict=True) if rows else ((), (), (), ())
    return pa.RecordBatch.from_pydict(
        {
            "id": pa.array(ids, pa.int64()),
            name: pa.array(vals, values or pa.string()),
            "_change_type": pa.array(kinds, pa.string()),
            "_commit_version": pa.array(versions, pa.int64()),
        }
    )


def stage(conn: psycopg.Connection, batches: list[pa.RecordBatch], **kw: Any) -> ChangePreparer:
    """Prepare and stage `batches` (each its own feed batch), as a landing does."""
    source = batches[0].schema.remove(batches[0].schema.get_field_index("_change_type"))
    source = source.remove(source.get_field_index("_commit_version"))
    columns = pg_columns(source, table="t")
    preparer = ChangePreparer(columns, key=("id",), policy="fail", table="t", **kw)
    apply.stage_rows(conn, change_stage.STAGE, preparer.columns, preparer.stream(batches))
    return preparer


def netted(
    conn: psycopg.Connection, net: change_stage.Net, value: str = "v"
) -> tuple[dict[Any, Any], list[Any]]:
    """The rows `net` upserts (key -> value) and the keys it deletes."""
    upserts = conn.execute(
        sql.SQL('SELECT id, "{}" FROM {}'.format(value, "{}")).format(net.upserts)
    )
    keys = conn.execute(sql.SQL("SELECT id FROM {}").format(net.deletes))
    return dict(upserts.fetchall()), sorted(k for (k,) in keys.fetchall())


@pytest.fixture(params=[False, True], ids=["aggregate", "sort"])
def sort(request: pytest.FixtureRequest) -> bool:
    """Both ways of netting: one aggregation when no key arrives twice, else the full sort."""
    return bool(request.param)


def net_last(
    conn: psycopg.Connection, preparer: ChangePreparer, sort: bool, held: tuple[int, ...] = ()
) -> change_stage.Net:
    """Net the stage against a synced table holding the keys `held` (at L)."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS synced (id bigint PRIMARY KEY)")
    conn.execute("INSERT INTO synced SELECT unnest(%s::bigint[])", (list(held),))
    return change_stage.net_last_changes(
        conn,
        key=("id",),
        columns=preparer.columns[:2],
        table="t",
        target=sql.Identifier("synced"),
        arriving_rows=preparer.arriving_rows,
        new_rows=preparer.new_rows,
        sort=sort,
    )


def reduce(
    conn: psycopg.Connection, rows: list[Row], sort: bool
) -> tuple[dict[Any, Any], list[Any]]:
    net = net_last(conn, stage(conn, [cdf(rows)]), sort)
    upserts, deletes = netted(conn, net)
    assert net.changes == len(upserts) + len(deletes)
    return upserts, deletes


def test_overwrite_inserts_before_deletes_keeps_the_new_rows(
    conn: psycopg.Connection, sort: bool
) -> None:
    rows = [
        (1, "new1", "insert", 4),
        (2, "new2", "insert", 4),
        (1, "old1", "delete", 4),
        (2, "old2", "delete", 4),
        (3, "old3", "delete", 4),
    ]
    assert reduce(conn, rows, sort) == ({1: "new1", 2: "new2"}, [3])


def test_unordered_versions_last_change_wins(conn: psycopg.Connection, sort: bool) -> None:
    rows = [
        (1, None, "delete", 3),
        (1, "a", "insert", 1),
        (2, "b", "insert", 2),
        (2, "b", "update_preimage", 3),
        (2, "B", "update_postimage", 3),
        (3, "c", "delete", 1),
        (3, "c2", "insert", 5),
    ]
    assert reduce(conn, rows, sort) == ({2: "B", 3: "c2"}, [1])


def test_preimages_never_land(conn: psycopg.Connection, sort: bool) -> None:
    rows = [(5, "old", "update_preimage", 2), (5, "new", "update_postimage", 2)]
    assert reduce(conn, rows, sort) == ({5: "new"}, [])


def test_two_new_rows_for_one_key_in_one_version_fail(conn: psycopg.Connection, sort: bool) -> None:
    with pytest.raises(DataError, match=r"\{'id': 7\} x2 in version 3"):
        reduce(conn, [(7, "a", "insert", 3), (7, "b", "insert", 3)], sort)


def test_same_key_in_different_versions_is_not_a_duplicate(
    conn: psycopg.Connection, sort: bool
) -> None:
    rows: list[Row] = [(7, "a", "insert", 3), (7, "a", "update_preimage", 4)]
    rows.append((7, "b", "update_postimage", 4))
    assert reduce(conn, rows, sort) == ({7: "b"}, [])


def test_null_keys_are_counted_not_applied(conn: psycopg.Connection, sort: bool) -> None:
    preparer = stage(conn, [cdf([(None, "x", "insert", 1), (1, "a", "insert", 1)])])
    assert preparer.null_key_rows == 1
    assert netted(conn, net_last(conn, preparer, sort)) == ({1: "a"}, [])


def test_null_key_rows_count_what_arrives_minus_what_leaves(
    conn: psycopg.Connection, sort: bool
) -> None:
    rows: list[Row] = [
        (None, "x", "insert", 1),
        (None, "y", "insert", 1),
        (None, "x", "update_preimage", 2),  # an update of a NULL-key row: still one row
        (None, "x2", "update_postimage", 2),
        (None, "y", "delete", 3),
        (None, "z", "update_preimage", 3),  # its key set: it leaves the NULL-key rows
        (4, "z", "update_postimage", 3),
    ]
    # Split over two feed batches: the count adds up across batches.
    preparer = stage(conn, [cdf(rows[:3]), cdf(rows[3:])])
    assert preparer.null_key_rows == 0
    assert netted(conn, net_last(conn, preparer, sort)) == ({4: "z"}, [])


def timeseries(
    conn: psycopg.Connection, rows: list[Row], stored: list[tuple[int, int | None]] = ()
) -> change_stage.Net:
    """Net an append-only range of a timeseries table whose synced rows are `stored`."""
    conn.execute("CREATE TEMP TABLE synced (id bigint PRIMARY KEY, at bigint)")
    for row in stored:
        conn.execute("INSERT INTO synced VALUES (%s, %s)", row)
    preparer = stage(conn, [cdf(rows, pa.int64(), "at")], keep_keys=True)
    return change_stage.net_latest_rows(
        conn,
        key=("id",),
        columns=preparer.columns[:2],
        timeseries_key="at",
        table="t",
        resolved=False,
        target=sql.Identifier("synced"),
    )


def test_timeseries_key_resolves_duplicates_within_a_version(conn: psycopg.Connection) -> None:
    net = timeseries(conn, [(1, 5, "insert", 2), (1, 9, "insert", 2), (1, 7, "insert", 2)])
    assert netted(conn, net, "at") == ({1: 9}, [])


def test_timeseries_ties_on_the_latest_value_are_a_duplicate_key(conn: psycopg.Connection) -> None:
    with pytest.raises(DataError, match=r"\{'id': 1\}: rows with the same key share the latest"):
        timeseries(conn, [(1, 9, "insert", 2), (1, 9, "insert", 3), (2, 1, "insert", 2)])


def test_timeseries_ties_older_than_the_stored_row_are_not_a_duplicate(
    conn: psycopg.Connection,
) -> None:
    # Key 1's stored row (at 9) stays the latest: new rows tied at 4, or at NULL (ranked last),
    # do not decide it. Key 2's new rows tie at the stored value: a duplicate, as a snapshot says.
    stored = [(1, 9), (2, 5)]
    tied: list[Row] = [(1, 4, "insert", 2), (1, 4, "insert", 3)]
    tied += [(1, None, "insert", 3), (1, None, "insert", 3)]
    assert netted(conn, timeseries(conn, tied, stored), "at") == ({}, [])
    conn.execute("DROP TABLE synced, _retl_changes, _retl_net")
    with pytest.raises(DataError, match=r"\{'id': 2\}: rows with the same key share the latest"):
        timeseries(conn, [(2, 5, "insert", 2), (2, 5, "insert", 2)], stored)


def test_timeseries_keeps_the_touched_keys_when_rows_leave(conn: psycopg.Connection) -> None:
    preparer = stage(
        conn,
        [cdf([(1, 5, "delete", 2), (2, 3, "insert", 2), (None, 1, "insert", 2)], pa.int64(), "at")],
        keep_keys=True,
    )
    touched = preparer.touched_keys()
    assert preparer.leaving_rows == 1
    assert touched is not None and sorted(touched.column("id").to_pylist()) == [1, 2]


def test_a_key_only_left_as_a_preimage_is_deleted(conn: psycopg.Connection, sort: bool) -> None:
    # UPDATE SET id = id + 1000 WHERE id < 3: the old keys appear only as preimages.
    rows = [
        (1, "a", "update_preimage", 2),
        (1001, "a", "update_postimage", 2),
        (2, "b", "update_preimage", 2),
        (1002, "b", "update_postimage", 2),
    ]
    assert reduce(conn, rows, sort) == ({1001: "a", 1002: "b"}, [1, 2])


def test_a_key_moved_away_and_back_lands_at_its_last_place(
    conn: psycopg.Connection, sort: bool
) -> None:
    rows = [
        (1001, "a", "update_postimage", 3),
        (1001, "a", "update_preimage", 4),
        (1, "a", "update_preimage", 3),
        (1, "a", "update_postimage", 4),
    ]
    assert reduce(conn, rows, sort) == ({1: "a"}, [1001])


def test_keys_swapped_in_one_version_both_stay(conn: psycopg.Connection, sort: bool) -> None:
    rows = [
        (1, "one", "update_preimage", 2),
        (2, "two", "update_preimage", 2),
        (2, "one", "update_postimage", 2),
        (1, "two", "update_postimage", 2),
    ]
    assert reduce(conn, rows, sort) == ({1: "two", 2: "one"}, [])


def test_a_range_whose_keys_arrive_once_is_netted_without_the_sort(
    conn: psycopg.Connection,
) -> None:
    rows = [(1, "a", "insert", 2), (2, "b", "update_postimage", 2), (3, None, "delete", 3)]
    net = net_last(conn, stage(conn, [cdf(rows)]), sort=False)
    assert "_retl_net" not in net.upserts.as_string(conn)
    assert netted(conn, net) == ({1: "a", 2: "b"}, [3])
    exists = conn.execute("SELECT to_regclass('pg_temp._retl_net')").fetchone()
    assert exists == (None,)


@pytest.mark.parametrize(
    ("rows", "held"),
    [
        ([(7, "twin", "insert", 2)], (7,)),  # the key Postgres holds, added again
        ([(7, "a", "insert", 1), (7, "b", "insert", 3)], ()),  # added twice, never removed
        ([(7, "a", "update_postimage", 2), (7, "b", "insert", 3)], (7,)),  # updated, added again
        ([(7, None, "delete", 2), (7, "a", "insert", 3), (7, "b", "insert", 4)], (7,)),
        # An update moved row 3 onto key 7, which the source holds already.
        ([(3, None, "update_preimage", 2), (7, "moved", "update_postimage", 2)], (3, 7)),
    ],
    ids=["held", "added-twice", "after-update", "re-added-twice", "moved-onto"],
)
def test_an_insert_of_a_key_the_source_holds_already_is_a_duplicate(
    conn: psycopg.Connection, sort: bool, rows: list[Row], held: tuple[int, ...]
) -> None:
    with pytest.raises(DataError, match=r"duplicate primary key \['id'\] .*\{'id': 7\} in version"):
        net_last(conn, stage(conn, [cdf(rows)]), sort, held=held)


@pytest.mark.parametrize(
    ("rows", "held", "upserts"),
    [
        ([(7, None, "delete", 2), (7, "b", "insert", 3)], (7,), {7: "b"}),  # removed, added
        ([(7, "b", "insert", 2), (7, None, "delete", 2)], (7,), {7: "b"}),  # an overwrite
        ([(7, "a", "insert", 1), (7, None, "delete", 2), (7, "b", "insert", 3)], (), {7: "b"}),
        ([(7, "a", "update_preimage", 2), (7, "b", "update_postimage", 2)], (7,), {7: "b"}),
        ([(8, "new", "insert", 2)], (7,), {8: "new"}),
        ([(7, "b", PAIRED_POSTIMAGE, 2)], (7,), {7: "b"}),  # its preimage was left out
    ],
    ids=["removed-then-added", "overwrite", "added-removed-added", "update", "new-key", "paired"],
)
def test_an_insert_after_its_key_left_is_no_duplicate(
    conn: psycopg.Connection,
    sort: bool,
    rows: list[Row],
    held: tuple[int, ...],
    upserts: dict[int, str],
) -> None:
    net = net_last(conn, stage(conn, [cdf(rows)]), sort, held=held)
    assert netted(conn, net) == (upserts, [])


def test_a_duplicate_a_later_version_removed_goes_to_a_snapshot(
    conn: psycopg.Connection, sort: bool
) -> None:
    rows: list[Row] = [(7, "twin", "insert", 2), (7, None, "delete", 3)]
    with pytest.raises(change_stage.DuplicatesResolvedLater):
        net_last(conn, stage(conn, [cdf(rows)]), sort, held=(7,))
