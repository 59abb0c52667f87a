"""Rules of the lakehouse change reductions: history fill of unchanged TOAST and the mirror's MERGE
input (order, truncate, key changes, last change per key).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa

from reverse_etl_assets.transform.lakehouse_changes import (
    MirrorChanges,
    fill_unchanged,
    history_rows,
    mirror_changes,
    unfilled_keys,
    with_older_rows,
    with_untouched_rows,
)

TS = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
COLUMNS = pa.schema(
    [("id", pa.int64()), ("name", pa.string()), ("doc", pa.string()), ("n", pa.decimal128(10, 2))]
)


def frame(events: list[dict[str, Any]], schema: pa.Schema = COLUMNS) -> pa.Table:
    """A change frame from dicts: `t` (change type), `lsn`, `seq`, optional `u`, values."""
    rows = []
    for e in events:
        row = {name: e.get(name) for name in schema.names}
        row.update(
            _pg_change_type=e["t"],
            _pg_lsn=e["lsn"],
            _pg_seq=e["seq"],
            _pg_xid=e["lsn"] // 10,
            _pg_commit_time=TS,
            _pg_unchanged=e.get("u"),
        )
        rows.append(row)
    full = pa.schema(
        [
            *schema,
            ("_pg_change_type", pa.string()),
            ("_pg_lsn", pa.int64()),
            ("_pg_seq", pa.int32()),
            ("_pg_xid", pa.int64()),
            ("_pg_commit_time", pa.timestamp("us", "UTC")),
            ("_pg_unchanged", pa.list_(pa.string())),
        ]
    )
    return pa.Table.from_pylist(rows, schema=full)


def by_key(changes: MirrorChanges, key: str = "id") -> dict[Any, dict[str, Any]]:
    """Mirror rows keyed by `key`, asserting one row per key."""
    rows = changes.rows.to_pylist()
    out = {r[key]: r for r in rows}
    assert len(out) == len(rows)
    return out


def test_several_transactions_keep_last_change_per_key() -> None:
    f = frame(
        [
            {"t": "insert", "lsn": 100, "seq": 0, "id": 1, "name": "a", "doc": "d1"},
            {"t": "insert", "lsn": 100, "seq": 1, "id": 2, "name": "b", "doc": "d2"},
            {"t": "update_postimage", "lsn": 200, "seq": 0, "id": 1, "name": "a2", "doc": "d1"},
            {"t": "update_postimage", "lsn": 300, "seq": 0, "id": 1, "name": "a3", "doc": "d1"},
            {"t": "delete", "lsn": 300, "seq": 1, "id": 2},
            {"t": "insert", "lsn": 300, "seq": 2, "id": 3, "name": "c"},
        ]
    )
    changes = mirror_changes(f, ["id"])
    rows = by_key(changes)
    assert not changes.clear_first
    assert rows[1]["name"] == "a3" and rows[1]["_op"] == "upsert"
    assert rows[2]["_op"] == "delete"
    assert rows[3]["_op"] == "upsert"
    assert changes.rows.column_names == ["id", "name", "doc", "n", "_op"]
    assert changes.rows.schema.field("n").type == pa.decimal128(10, 2)


def test_frame_out_of_order_is_sorted_by_lsn_seq_preimage_first() -> None:
    f = frame(
        [
            {"t": "update_postimage", "lsn": 300, "seq": 0, "id": 1, "name": "late"},
            {"t": "update_postimage", "lsn": 200, "seq": 5, "id": 1, "name": "early"},
            {"t": "update_postimage", "lsn": 250, "seq": 1, "id": 2, "name": "x"},
            {"t": "update_preimage", "lsn": 250, "seq": 1, "id": 9},
        ]
    )
    rows = by_key(mirror_changes(f, ["id"]))
    assert rows[1]["name"] == "late"
    # the key change 9→2 deletes 9 even though its preimage came after the postimage
    assert rows[9]["_op"] == "delete" and rows[2]["_op"] == "upsert"


def test_delete_then_reinsert_is_upsert() -> None:
    f = frame(
        [
            {"t": "delete", "lsn": 100, "seq": 0, "id": 1},
            {"t": "insert", "lsn": 200, "seq": 0, "id": 1, "name": "again"},
        ]
    )
    rows = by_key(mirror_changes(f, ["id"]))
    assert rows[1]["_op"] == "upsert" and rows[1]["name"] == "again"


def test_key_change_under_default_then_insert_old_key() -> None:
    # DEFAULT: the preimage (key only) comes only because the key changed
    f = frame(
        [
            {"t": "update_preimage", "lsn": 100, "seq": 0, "id": 1},
            {"t": "update_postimage", "lsn": 100, "seq": 0, "id": 2, "name": "moved"},
            {"t": "insert", "lsn": 200, "seq": 0, "id": 1, "name": "new one"},
        ]
    )
    rows = by_key(mirror_changes(f, ["id"]))
    assert rows[1] == {"id": 1, "name": "new one", "doc": None, "n": None, "_op": "upsert"}
    assert rows[2]["_op"] == "upsert" and rows[2]["name"] == "moved"


def test_key_change_alone_deletes_old_key() -> None:
    f = frame(
        [
            {"t": "update_preimage", "lsn": 100, "seq": 0, "id": 1, "name": "full", "doc": "d"},
            {"t": "update_postimage", "lsn": 100, "seq": 0, "id": 2, "name": "full", "doc": "d"},
        ]
    )
    rows = by_key(mirror_changes(f, ["id"]))
    assert rows[1]["_op"] == "delete" and rows[2]["_op"] == "upsert"


def test_full_preimage_with_same_key_is_not_a_delete() -> None:
    f = frame(
        [
            {"t": "update_preimage", "lsn": 100, "seq": 0, "id": 1, "name": "old", "doc": "d"},
            {"t": "update_postimage", "lsn": 100, "seq": 0, "id": 1, "name": "new", "doc": "d"},
        ]
    )
    rows = by_key(mirror_changes(f, ["id"]))
    assert list(rows) == [1] and rows[1]["_op"] == "upsert" and rows[1]["name"] == "new"


def test_composite_key_change() -> None:
    schema = pa.schema([("a", pa.int64()), ("b", pa.string()), ("v", pa.string())])
    f = frame(
        [
            {"t": "insert", "lsn": 1, "seq": 0, "a": 1, "b": "x", "v": "one"},
            {"t": "update_preimage", "lsn": 2, "seq": 0, "a": 1, "b": "x"},
            {"t": "update_postimage", "lsn": 2, "seq": 0, "a": 1, "b": "y", "v": "one"},
        ],
        schema,
    )
    rows = {(r["a"], r["b"]): r for r in mirror_changes(f, ["a", "b"]).rows.to_pylist()}
    assert rows[(1, "x")]["_op"] == "delete" and rows[(1, "y")]["_op"] == "upsert"


def test_truncate_in_the_middle_drops_what_came_before() -> None:
    f = frame(
        [
            {"t": "insert", "lsn": 100, "seq": 0, "id": 1, "name": "gone"},
            {"t": "insert", "lsn": 100, "seq": 1, "id": 2, "name": "gone"},
            {"t": "truncate", "lsn": 200, "seq": 0},
            {"t": "insert", "lsn": 300, "seq": 0, "id": 2, "name": "after"},
        ]
    )
    changes = mirror_changes(f, ["id"])
    assert changes.clear_first
    assert changes.rows.to_pylist() == [
        {"id": 2, "name": "after", "doc": None, "n": None, "_op": "upsert"}
    ]


def test_truncate_last_leaves_no_rows() -> None:
    f = frame(
        [
            {"t": "insert", "lsn": 100, "seq": 0, "id": 1, "name": "gone"},
            {"t": "truncate", "lsn": 200, "seq": 0},
        ]
    )
    changes = mirror_changes(f, ["id"])
    assert changes.clear_first and changes.rows.num_rows == 0


def test_insert_then_partial_update_takes_toast_from_insert() -> None:
    # ingestr #805: the update does not resend `doc`; the mirror must not get NULL
    f = frame(
        [
            {"t": "insert", "lsn": 100, "seq": 0, "id": 1, "name": "a", "doc": "BIG"},
            {"t": "update_postimage", "lsn": 200, "seq": 0, "id": 1, "name": "b", "u": ["doc"]},
        ]
    )
    changes = mirror_changes(f, ["id"])
    assert changes.rows.to_pylist() == [
        {"id": 1, "name": "b", "doc": "BIG", "n": None, "_op": "upsert"}
    ]
    history = fill_unchanged(f, ["id"], prior=None)
    assert history.column("doc").to_pylist() == ["BIG", "BIG"]
    assert history.column("_pg_unchanged").to_pylist() == [None, None]


def test_toast_from_an_earlier_update_that_changed_it() -> None:
    f = frame(
        [
            {"t": "update_postimage", "lsn": 100, "seq": 0, "id": 1, "name": "a", "doc": "V2"},
            {"t": "update_postimage", "lsn": 200, "seq": 0, "id": 1, "name": "b", "u": ["doc"]},
            {"t": "update_postimage", "lsn": 300, "seq": 0, "id": 1, "name": "c", "u": ["doc"]},
        ]
    )
    assert by_key(mirror_changes(f, ["id"]))[1]["doc"] == "V2"
    assert fill_unchanged(f, ["id"], prior=None).column("doc").to_pylist() == ["V2"] * 3


def test_toast_unknown_in_frame_keeps_target_value() -> None:
    f = frame(
        [
            {"t": "update_postimage", "lsn": 100, "seq": 0, "id": 1, "name": "a", "u": ["doc"]},
            {"t": "update_postimage", "lsn": 100, "seq": 1, "id": 2, "name": "b", "doc": "new"},
            {"t": "insert", "lsn": 100, "seq": 2, "id": 3, "name": "c", "doc": "x"},
        ]
    )
    changes = mirror_changes(f, ["id"])
    rows = by_key(changes)
    assert changes.rows.column_names == ["id", "name", "doc", "n", "_op", "_keep_doc"]
    assert [rows[k]["_keep_doc"] for k in (1, 2, 3)] == [True, False, False]
    assert rows[1]["doc"] is None


def test_no_keep_flag_when_every_toast_value_was_filled() -> None:
    f = frame(
        [
            {"t": "insert", "lsn": 1, "seq": 0, "id": 1, "doc": "x"},
            {"t": "update_postimage", "lsn": 2, "seq": 0, "id": 1, "u": ["doc"]},
        ]
    )
    assert "_keep_doc" not in mirror_changes(f, ["id"]).rows.column_names


def test_fill_from_full_preimage_first() -> None:
    f = frame(
        [
            {"t": "insert", "lsn": 100, "seq": 0, "id": 1, "doc": "stale?"},
            {"t": "update_preimage", "lsn": 200, "seq": 0, "id": 1, "name": "a", "doc": "PRE"},
            {"t": "update_postimage", "lsn": 200, "seq": 0, "id": 1, "name": "b", "u": ["doc"]},
        ]
    )
    history = fill_unchanged(f, ["id"], prior=None)
    assert history.column("doc").to_pylist() == ["stale?", "PRE", "PRE"]
    assert history.column("_pg_unchanged").null_count == 3


def test_fill_follows_a_key_change() -> None:
    # DEFAULT key change: preimage has the key only; the value lives under the old key
    f = frame(
        [
            {"t": "insert", "lsn": 100, "seq": 0, "id": 1, "doc": "BIG"},
            {"t": "update_preimage", "lsn": 200, "seq": 0, "id": 1},
            {"t": "update_postimage", "lsn": 200, "seq": 0, "id": 2, "u": ["doc"]},
            {"t": "update_preimage", "lsn": 300, "seq": 0, "id": 2},
            {"t": "update_postimage", "lsn": 300, "seq": 0, "id": 3, "u": ["doc"]},
        ]
    )
    history = fill_unchanged(f, ["id"], prior=None)
    assert history.column("doc").to_pylist() == ["BIG", None, "BIG", None, "BIG"]
    assert by_key(mirror_changes(f, ["id"]))[3]["doc"] == "BIG"


def test_fill_never_takes_the_value_of_a_row_deleted_before() -> None:
    # key 3 is deleted, then a row moves onto it through a chain of key changes (1 → 2 → 3):
    # its value is the moved row's, never the deleted row's
    events = [
        {"t": "insert", "lsn": 100, "seq": 0, "id": 3, "doc": "DELETED"},
        {"t": "delete", "lsn": 200, "seq": 0, "id": 3},
        {"t": "insert", "lsn": 200, "seq": 1, "id": 1, "doc": "MOVED"},
        {"t": "update_preimage", "lsn": 300, "seq": 0, "id": 1},
        {"t": "update_postimage", "lsn": 300, "seq": 0, "id": 2, "u": ["doc"]},
        {"t": "update_preimage", "lsn": 300, "seq": 1, "id": 2},
        {"t": "update_postimage", "lsn": 300, "seq": 1, "id": 3, "u": ["doc"]},
    ]
    f = frame(events)
    history = fill_unchanged(f, ["id"], prior=None)
    assert history.column("doc").to_pylist()[-1] == "MOVED"
    assert by_key(mirror_changes(f, ["id"]))[3]["doc"] == "MOVED"
    # the moved row's value unknown to the frame: it stays unknown, not the deleted row's
    unknown = frame([*events[:2], *events[5:]])
    filled = fill_unchanged(unknown, ["id"], prior=None)
    assert filled.column("doc").to_pylist()[-1] is None
    assert filled.column("_pg_unchanged").to_pylist()[-1] == ["doc"]


def test_fill_from_prior_mirror_rows() -> None:
    f = frame(
        [
            {"t": "update_preimage", "lsn": 100, "seq": 0, "id": 1},
            {"t": "update_postimage", "lsn": 100, "seq": 0, "id": 5, "u": ["doc", "n"]},
            {"t": "update_postimage", "lsn": 200, "seq": 0, "id": 7, "u": ["doc"]},
            {"t": "update_postimage", "lsn": 300, "seq": 0, "id": 8, "u": ["doc"]},
        ]
    )
    assert sorted(unfilled_keys(f, ["id"]).column("id").to_pylist()) == [1, 5, 7, 8]
    prior = pa.table(
        {
            "id": pa.array([1, 7], pa.int64()),
            "doc": ["from 1", "from 7"],
            "n": pa.array([None, None], pa.decimal128(10, 2)),
        }
    )
    history = fill_unchanged(f, ["id"], prior=prior)
    assert history.column("doc").to_pylist() == [None, "from 1", "from 7", None]
    # `n` was null in the mirror: it cannot have been a TOAST value, so it stays unknown
    assert history.column("_pg_unchanged").to_pylist() == [None, ["n"], None, ["doc"]]
    assert history.schema == f.schema
    assert history.num_rows == f.num_rows


def test_prior_mirror_rows_count_from_the_mirrors_version() -> None:
    # a replay after a crash: the mirror holds the key change at 100 already (row 10 has the
    # value); the update at 200 takes it from there
    f = frame(
        [
            {"t": "update_preimage", "lsn": 100, "seq": 0, "id": 2},
            {"t": "update_postimage", "lsn": 100, "seq": 0, "id": 10, "u": ["doc"]},
            {"t": "update_postimage", "lsn": 200, "seq": 0, "id": 10, "name": "b", "u": ["doc"]},
        ]
    )
    prior = pa.table({"id": pa.array([10], pa.int64()), "doc": ["BIG"]})
    history = fill_unchanged(f, ["id"], prior=prior, prior_lsn=100)
    assert history.column("doc").to_pylist() == [None, None, "BIG"]
    assert history.column("_pg_unchanged").to_pylist() == [None, ["doc"], None]


def test_fill_unchanged_without_toast_returns_frame() -> None:
    f = frame([{"t": "insert", "lsn": 1, "seq": 0, "id": 1, "doc": "x"}])
    assert fill_unchanged(f, ["id"], prior=None).equals(f)


def test_history_rows_drop_unchanged_only() -> None:
    f = frame([{"t": "truncate", "lsn": 1, "seq": 0}])
    history = history_rows(f)
    assert "_pg_unchanged" not in history.column_names
    assert history.num_rows == 1 and history.column("_pg_change_type")[0].as_py() == "truncate"


def test_duplicate_events_collapse_to_last() -> None:
    f = frame(
        [{"t": "insert", "lsn": 1, "seq": 0, "id": 1, "name": "v0"}]
        + [
            {"t": "update_postimage", "lsn": 1 + i, "seq": 0, "id": 1, "name": f"v{i}"}
            for i in range(1, 20)
        ]
        + [{"t": "delete", "lsn": 100, "seq": 0, "id": 1}]
        + [{"t": "insert", "lsn": 101, "seq": 0, "id": 1, "name": "final"}]
    )
    rows = mirror_changes(f, ["id"]).rows.to_pylist()
    assert rows == [{"id": 1, "name": "final", "doc": None, "n": None, "_op": "upsert"}]


def test_types_survive_polars() -> None:
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("ts", pa.timestamp("us", "UTC")),
            ("ntz", pa.timestamp("us")),
            ("d", pa.date32()),
            ("b", pa.binary()),
            ("l", pa.list_(pa.int32())),
        ]
    )
    f = frame(
        [
            {
                "t": "insert",
                "lsn": 1,
                "seq": 0,
                "id": 1,
                "ts": TS,
                "ntz": dt.datetime(1, 1, 1),
                "d": dt.date(9999, 12, 31),
                "b": b"\x00",
                "l": [1, None],
            },
            {"t": "update_postimage", "lsn": 2, "seq": 0, "id": 1, "u": ["b", "l"]},
        ],
        schema,
    )
    rows = mirror_changes(f, ["id"]).rows
    assert rows.schema.field("ntz").type == pa.timestamp("us")
    assert rows.to_pylist()[0]["b"] == b"\x00" and rows.to_pylist()[0]["l"] == [1, None]
    assert fill_unchanged(f, ["id"], prior=None).schema == f.schema


def test_rows_older_than_an_added_column_get_its_default() -> None:
    # `doc` was added with a default between the changes at 100 and at 200
    f = frame(
        [
            {"t": "update_postimage", "lsn": 100, "seq": 0, "id": 1, "name": "before"},
            {"t": "update_postimage", "lsn": 200, "seq": 0, "id": 2, "doc": None},
            {"t": "insert", "lsn": 200, "seq": 1, "id": 3, "doc": "own"},
        ]
    )
    values = {"doc": pa.scalar("dflt")}
    older = with_older_rows(f, values, {"doc": (200, 0)})
    assert older.column("doc").to_pylist() == ["dflt", None, "own"]
    changes = with_untouched_rows(
        mirror_changes(older, ["id"]), pa.table({"id": pa.array([1, 2, 7, 8], pa.int64())}), values
    )
    fills = [r for r in changes.rows.to_pylist() if r["_op"] == "fill"]
    assert [(r["id"], r["doc"]) for r in fills] == [(7, "dflt"), (8, "dflt")]
    assert changes.fill_columns == ("doc",)
