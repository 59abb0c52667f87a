"""The lakehouse Delta writer on real Delta tables: txn in each commit, snapshot, history append,
mirror merge (against a plain Python model), schema evolution and errors.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake

from reverse_etl_assets.delta import writer
from reverse_etl_assets.delta.sql_literals import literal
from reverse_etl_assets.delta.writer import (
    SchemaConflictError,
    append_changes,
    lookup_rows,
    merge_changes,
    settled_columns,
    transaction_version,
    write_snapshot,
)
from reverse_etl_assets.errors import ReverseEtlError, TransientError
from reverse_etl_assets.transform.lakehouse_changes import (
    fill_unchanged,
    history_rows,
    mirror_changes,
    unfilled_keys,
)

APP = "pg2delta/test/slot/public.t"
TS = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("order", pa.string()),
        ("My Col", pa.int64()),
        ("doc", pa.string()),
        ("at", pa.timestamp("us", "UTC")),
        ("local", pa.timestamp("us")),
    ]
)
META = pa.schema(
    [
        ("_pg_change_type", pa.string()),
        ("_pg_lsn", pa.int64()),
        ("_pg_seq", pa.int32()),
        ("_pg_xid", pa.int64()),
        ("_pg_commit_time", pa.timestamp("us", "UTC")),
        ("_pg_unchanged", pa.list_(pa.string())),
    ]
)


def frame(events: list[dict[str, Any]], schema: pa.Schema = SCHEMA) -> pa.Table:
    """A change frame from dicts: `t` (change type), `lsn`, `seq`, optional `u`, column values."""
    rows = []
    for e in events:
        row = {name: e.get(name) for name in schema.names}
        row.update(
            _pg_change_type=e["t"],
            _pg_lsn=e["lsn"],
            _pg_seq=e["seq"],
            _pg_xid=e["lsn"],
            _pg_commit_time=TS,
            _pg_unchanged=e.get("u"),
        )
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=pa.schema([*schema, *META]))


def mirror(uri: str, key: str = "id") -> dict[Any, dict[str, Any]]:
    """The mirror's rows keyed by `key`."""
    return {r[key]: r for r in DeltaTable(uri).to_pyarrow_table().to_pylist()}


def cdf_types(uri: str, version: int) -> dict[tuple[Any, str], int]:
    """Counts of (key, _change_type) in the Change Data Feed of one Delta version."""
    cdf = pa.table(DeltaTable(uri).load_cdf(starting_version=version, ending_version=version))
    counts: dict[tuple[Any, str], int] = {}
    for r in cdf.select(["id", "_change_type"]).to_pylist():
        counts[(r["id"], r["_change_type"])] = counts.get((r["id"], r["_change_type"]), 0) + 1
    return counts


# --- txn, snapshot, append -------------------------------------------------------------------


def test_transaction_version_none_without_table_or_txn(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    assert transaction_version(uri, APP) is None
    append_changes(uri, pa.table({"id": [1]}), app_id="other", version=3)
    assert transaction_version(uri, APP) is None
    assert transaction_version(uri, "other") == 3


def test_write_snapshot_streams_and_commits_txn_with_cdf(tmp_path: Path) -> None:
    uri = str(tmp_path / "mirror")
    read: list[int] = []

    def batches() -> Iterator[pa.RecordBatch]:
        for i in range(5):
            read.append(i)
            yield pa.record_batch({"id": pa.array(range(i * 10, i * 10 + 10), pa.int64())})

    reader = pa.RecordBatchReader.from_batches(pa.schema([("id", pa.int64())]), batches())
    version = write_snapshot(uri, reader, app_id=APP, version=500, change_data_feed=True)
    table = DeltaTable(uri)
    assert version == table.version() == 0
    assert read == [0, 1, 2, 3, 4]
    assert table.to_pyarrow_table().num_rows == 50
    assert table.metadata().configuration["delta.enableChangeDataFeed"] == "true"
    assert transaction_version(uri, APP) == 500
    # a new snapshot replaces rows and schema, in one commit with the new txn
    again = pa.table({"key": ["a"], "v": [1.5]})
    reader = pa.RecordBatchReader.from_batches(again.schema, again.to_batches())
    assert write_snapshot(uri, reader, app_id=APP, version=900, change_data_feed=True) == 1
    table = DeltaTable(uri)
    assert table.to_pyarrow_table().to_pylist() == [{"key": "a", "v": 1.5}]
    assert table.transaction_version(APP) == 900


def test_write_snapshot_without_cdf(tmp_path: Path) -> None:
    uri = str(tmp_path / "h")
    data = pa.table({"id": [1]})
    reader = pa.RecordBatchReader.from_batches(data.schema, data.to_batches())
    write_snapshot(uri, reader, app_id=APP, version=1, change_data_feed=False)
    config = DeltaTable(uri).metadata().configuration or {}
    assert config.get("delta.enableChangeDataFeed") != "true"


def test_append_history_commits_txn_and_accepts_lower_version(tmp_path: Path) -> None:
    uri = str(tmp_path / "lb_t_history")
    f = frame([{"t": "insert", "lsn": 100, "seq": 0, "id": 1, "local": dt.datetime(1, 1, 1)}])
    assert append_changes(uri, history_rows(f), app_id=APP, version=100) == 0
    assert transaction_version(uri, APP) == 100
    # timestamp without zone lands as Delta timestamp_ntz, values exact
    table = DeltaTable(uri)
    assert "timestampNtz" in (table.protocol().writer_features or [])
    assert table.schema().to_arrow().field("local").type == pa.timestamp("us")
    assert table.to_pyarrow_table().column("local").to_pylist() == [dt.datetime(1, 1, 1)]
    # delta-rs does not refuse a lower txn version: the caller must skip what Delta has
    assert append_changes(uri, history_rows(f), app_id=APP, version=50) == 1
    assert transaction_version(uri, APP) == 50
    assert DeltaTable(uri).to_pyarrow_table().num_rows == 2


def test_append_adds_new_columns_and_nulls_missing_ones(tmp_path: Path) -> None:
    uri = str(tmp_path / "h")
    append_changes(uri, pa.table({"id": [1], "old": ["x"]}), app_id=APP, version=1)
    append_changes(uri, pa.table({"id": [2], "new": [2.5]}), app_id=APP, version=2)
    rows = sorted(DeltaTable(uri).to_pyarrow_table().to_pylist(), key=lambda r: r["id"])
    assert rows == [{"id": 1, "old": "x", "new": None}, {"id": 2, "old": None, "new": 2.5}]


def test_append_empty_still_commits_txn(tmp_path: Path) -> None:
    uri = str(tmp_path / "h")
    append_changes(uri, pa.table({"id": [1]}), app_id=APP, version=1)
    assert append_changes(uri, pa.table({"id": pa.array([], pa.int64())}), app_id=APP, version=2)
    assert transaction_version(uri, APP) == 2


def test_type_change_is_terminal_and_writes_nothing(tmp_path: Path) -> None:
    uri = str(tmp_path / "h")
    append_changes(
        uri, pa.table({"id": [1], "n": pa.array([1], pa.int32())}), app_id=APP, version=1
    )
    with pytest.raises(SchemaConflictError) as info:
        append_changes(uri, pa.table({"id": [2], "n": ["2"]}), app_id=APP, version=2)
    assert info.value.terminal and isinstance(info.value, ReverseEtlError)
    message = str(info.value)
    assert uri in message and "'n'" in message and "int32" in message and "string" in message
    assert "--full-refresh" in message
    assert DeltaTable(uri).version() == 0
    # int4 → int8 in Postgres cannot go into the int32 Delta column either
    with pytest.raises(SchemaConflictError):
        append_changes(uri, pa.table({"n": pa.array([1], pa.int64())}), app_id=APP, version=2)
    # a narrower value fits: int16 into int32
    append_changes(uri, pa.table({"n": pa.array([1], pa.int16())}), app_id=APP, version=2)


def test_merge_type_change_is_terminal(tmp_path: Path) -> None:
    uri = str(tmp_path / "m")
    f = frame([{"t": "insert", "lsn": 1, "seq": 0, "id": 1}])
    merge_changes(uri, mirror_changes(f, ["id"]), key_columns=["id"], app_id=APP, version=1)
    other = pa.schema([("id", pa.int64()), ("My Col", pa.string())])
    g = frame([{"t": "insert", "lsn": 2, "seq": 0, "id": 2, "My Col": "x"}], other)
    with pytest.raises(SchemaConflictError, match="My Col"):
        merge_changes(uri, mirror_changes(g, ["id"]), key_columns=["id"], app_id=APP, version=2)


def test_unreachable_store_is_transient_without_secrets() -> None:
    options = {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID",
        "AWS_SECRET_ACCESS_KEY": "very-secret-value",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "max_retries": "0",
    }
    with pytest.raises(TransientError) as info:
        append_changes(
            "s3://bucket/t", pa.table({"id": [1]}), app_id=APP, version=1, storage_options=options
        )
    message = str(info.value)
    assert not info.value.terminal and "s3://bucket/t" in message
    assert "very-secret-value" not in message and "AKIAEXAMPLEKEYID" not in message


# --- mirror merge ----------------------------------------------------------------------------


def test_first_frame_creates_mirror_with_cdf_and_txn(tmp_path: Path) -> None:
    uri = str(tmp_path / "m")
    f = frame(
        [
            {"t": "insert", "lsn": 10, "seq": 0, "id": 1, "order": "o", "My Col": 5, "at": TS},
            {"t": "insert", "lsn": 10, "seq": 1, "id": 2, "local": dt.datetime(2020, 1, 1)},
        ]
    )
    result = merge_changes(
        uri, mirror_changes(f, ["id"]), key_columns=["id"], app_id=APP, version=10
    )
    assert (result.inserted, result.updated, result.deleted) == (2, 0, 0)
    table = DeltaTable(uri)
    assert result.version == table.version() == 1
    assert table.transaction_version(APP) == 10
    assert table.metadata().configuration["delta.enableChangeDataFeed"] == "true"
    assert table.schema().to_arrow().names == SCHEMA.names
    assert mirror(uri)[1]["order"] == "o" and mirror(uri)[1]["My Col"] == 5


def test_merge_quotes_names_and_reports_cdf(tmp_path: Path) -> None:
    uri = str(tmp_path / "m")
    first = frame(
        [
            {"t": "insert", "lsn": 1, "seq": i, "id": i, "order": f"o{i}", "My Col": i}
            for i in range(1, 5)
        ]
    )
    merge_changes(uri, mirror_changes(first, ["id"]), key_columns=["id"], app_id=APP, version=1)
    second = frame(
        [
            {"t": "update_postimage", "lsn": 2, "seq": 0, "id": 1, "order": "new", "My Col": 10},
            {"t": "delete", "lsn": 2, "seq": 1, "id": 2},
            {"t": "insert", "lsn": 2, "seq": 2, "id": 9, "order": "nine", "My Col": 9},
            {"t": "update_preimage", "lsn": 2, "seq": 3, "id": 3},
            {"t": "update_postimage", "lsn": 2, "seq": 3, "id": 30, "order": "o3", "My Col": 3},
        ]
    )
    result = merge_changes(
        uri, mirror_changes(second, ["id"]), key_columns=["id"], app_id=APP, version=2
    )
    assert (result.inserted, result.updated, result.deleted) == (2, 1, 2)
    rows = mirror(uri)
    assert sorted(rows) == [1, 4, 9, 30]
    assert rows[1]["order"] == "new" and rows[1]["My Col"] == 10 and rows[4]["order"] == "o4"
    assert cdf_types(uri, result.version) == {
        (1, "update_preimage"): 1,
        (1, "update_postimage"): 1,
        (2, "delete"): 1,
        (3, "delete"): 1,
        (9, "insert"): 1,
        (30, "insert"): 1,
    }


def test_merge_keeps_target_value_for_unchanged_toast(tmp_path: Path) -> None:
    uri = str(tmp_path / "m")
    first = frame([{"t": "insert", "lsn": 1, "seq": 0, "id": 1, "doc": "BIG", "order": "a"}])
    merge_changes(uri, mirror_changes(first, ["id"]), key_columns=["id"], app_id=APP, version=1)
    second = frame(
        [{"t": "update_postimage", "lsn": 2, "seq": 0, "id": 1, "order": "b", "u": ["doc"]}]
    )
    changes = mirror_changes(second, ["id"])
    assert "_keep_doc" in changes.rows.column_names
    merge_changes(uri, changes, key_columns=["id"], app_id=APP, version=2)
    assert mirror(uri)[1]["doc"] == "BIG" and mirror(uri)[1]["order"] == "b"
    # the history gets the value from the mirror through lookup_rows
    keys = unfilled_keys(second, ["id"])
    prior = lookup_rows(uri, ["id"], keys, columns=["doc"])
    assert fill_unchanged(second, ["id"], prior=prior).column("doc").to_pylist() == ["BIG"]


def test_truncate_then_inserts_in_one_commit(tmp_path: Path) -> None:
    uri = str(tmp_path / "m")
    first = frame([{"t": "insert", "lsn": 1, "seq": i, "id": i} for i in range(5)])
    merge_changes(uri, mirror_changes(first, ["id"]), key_columns=["id"], app_id=APP, version=1)
    before = DeltaTable(uri).version()
    second = frame(
        [
            {"t": "update_postimage", "lsn": 2, "seq": 0, "id": 1, "order": "x"},
            {"t": "truncate", "lsn": 3, "seq": 0},
            {"t": "insert", "lsn": 4, "seq": 0, "id": 3, "order": "back"},
            {"t": "insert", "lsn": 4, "seq": 1, "id": 7, "order": "new"},
        ]
    )
    result = merge_changes(
        uri, mirror_changes(second, ["id"]), key_columns=["id"], app_id=APP, version=4
    )
    assert result.version == before + 1
    rows = mirror(uri)
    assert sorted(rows) == [3, 7] and rows[3]["order"] == "back"
    assert DeltaTable(uri).transaction_version(APP) == 4


def test_truncate_alone_empties_mirror(tmp_path: Path) -> None:
    uri = str(tmp_path / "m")
    first = frame([{"t": "insert", "lsn": 1, "seq": 0, "id": 1}])
    merge_changes(uri, mirror_changes(first, ["id"]), key_columns=["id"], app_id=APP, version=1)
    second = frame([{"t": "truncate", "lsn": 2, "seq": 0}])
    merge_changes(uri, mirror_changes(second, ["id"]), key_columns=["id"], app_id=APP, version=2)
    assert mirror(uri) == {} and transaction_version(uri, APP) == 2


def test_frame_without_mirror_changes_still_commits_txn(tmp_path: Path) -> None:
    uri = str(tmp_path / "m")
    first = frame([{"t": "insert", "lsn": 1, "seq": 0, "id": 1}])
    merge_changes(uri, mirror_changes(first, ["id"]), key_columns=["id"], app_id=APP, version=1)
    # a frame that reduces to no mirror change must still record its txn in the mirror
    empty = mirror_changes(first.slice(0, 0), ["id"])
    result = merge_changes(uri, empty, key_columns=["id"], app_id=APP, version=2)
    assert result.version == 2 and transaction_version(uri, APP) == 2
    assert sorted(mirror(uri)) == [1]


def test_schema_evolution_added_and_dropped_columns(tmp_path: Path) -> None:
    uri = str(tmp_path / "m")
    v1 = pa.schema([("id", pa.int64()), ("a", pa.string()), ("gone", pa.float64())])
    first = frame(
        [{"t": "insert", "lsn": 1, "seq": i, "id": i, "a": "x", "gone": 1.0} for i in range(3)], v1
    )
    merge_changes(uri, mirror_changes(first, ["id"]), key_columns=["id"], app_id=APP, version=1)
    # Postgres: ADD COLUMN extra, DROP COLUMN gone
    v2 = pa.schema([("id", pa.int64()), ("a", pa.string()), ("extra", pa.int32())])
    second = frame(
        [
            {"t": "update_postimage", "lsn": 2, "seq": 0, "id": 1, "a": "y", "extra": 7},
            {"t": "insert", "lsn": 2, "seq": 1, "id": 5, "a": "z", "extra": 8},
        ],
        v2,
    )
    merge_changes(uri, mirror_changes(second, ["id"]), key_columns=["id"], app_id=APP, version=2)
    table = DeltaTable(uri)
    assert table.schema().to_arrow().names == ["id", "a", "gone", "extra"]
    rows = mirror(uri)
    assert rows[0] == {"id": 0, "a": "x", "gone": 1.0, "extra": None}
    assert rows[1] == {"id": 1, "a": "y", "gone": None, "extra": 7}
    assert rows[5] == {"id": 5, "a": "z", "gone": None, "extra": 8}


@pytest.mark.parametrize("write", ["append", "merge", "snapshot"])
@pytest.mark.parametrize("added", [pa.timestamp("us"), pa.list_(pa.timestamp("us"))])
def test_a_timestamp_without_zone_added_to_a_table_without_it_lands(
    tmp_path: Path, write: str, added: pa.DataType
) -> None:
    """delta-rs refuses a write that adds a timestamp_ntz column to a table created without one
    ("does not have the required 'timestampNtz' feature"); the writer turns the feature on first."""
    uri = str(tmp_path / "t")
    v1 = pa.schema([("id", pa.int64()), ("a", pa.string())])
    first = frame([{"t": "insert", "lsn": 1, "seq": 0, "id": 1, "a": "x"}], v1)
    merge_changes(uri, mirror_changes(first, ["id"]), key_columns=["id"], app_id=APP, version=1)
    value = dt.datetime(1, 1, 1) if added == pa.timestamp("us") else [dt.datetime(1, 1, 1)]
    v2 = pa.schema([("id", pa.int64()), ("a", pa.string()), ("local", added)])
    second = frame([{"t": "insert", "lsn": 2, "seq": 0, "id": 2, "a": "y", "local": value}], v2)
    if write == "append":
        append_changes(uri, history_rows(second), app_id=APP, version=2)
    elif write == "merge":
        changes = mirror_changes(second, ["id"])
        merge_changes(uri, changes, key_columns=["id"], app_id=APP, version=2)
    else:
        rows = second.select(v2.names)
        reader = pa.RecordBatchReader.from_batches(rows.schema, rows.to_batches())
        write_snapshot(uri, reader, app_id=APP, version=2, change_data_feed=True)
    table = DeltaTable(uri)
    assert table.transaction_version(APP) == 2
    assert {"timestampNtz", "changeDataFeed"} <= set(table.protocol().writer_features or [])
    assert mirror(uri)[2]["local"] == value
    if write == "merge":
        assert cdf_types(uri, table.version()) == {(2, "insert"): 1}


def test_columns_added_before_a_crash_stay_unsettled_until_rows_land(tmp_path: Path) -> None:
    """A mirror's new column is committed before the MERGE that fills its older rows; between
    the two (a crash, then someone's OPTIMIZE) it is not settled, so the replay fills it."""
    uri = str(tmp_path / "m")
    v1 = pa.schema([("id", pa.int64()), ("a", pa.string())])
    first = frame([{"t": "insert", "lsn": 1, "seq": 0, "id": 1, "a": "x"}], v1)
    merge_changes(uri, mirror_changes(first, ["id"]), key_columns=["id"], app_id=APP, version=1)
    assert settled_columns(uri) == {"id", "a"}
    writer._add_columns(DeltaTable(uri), [pa.field("extra", pa.int32())])
    DeltaTable(uri).optimize.compact()
    assert settled_columns(uri) == {"id", "a"}
    v2 = pa.schema([("id", pa.int64()), ("a", pa.string()), ("extra", pa.int32())])
    second = frame([{"t": "insert", "lsn": 2, "seq": 0, "id": 2, "a": "y", "extra": 3}], v2)
    merge_changes(uri, mirror_changes(second, ["id"]), key_columns=["id"], app_id=APP, version=2)
    assert settled_columns(uri) == {"id", "a", "extra"}
    assert settled_columns(str(tmp_path / "none")) is None


def test_a_table_written_without_marks_has_every_column_settled(tmp_path: Path) -> None:
    uri = str(tmp_path / "old")
    write_deltalake(uri, pa.table({"id": [1], "a": ["x"]}))
    write_deltalake(
        uri, pa.table({"id": [2], "a": ["y"], "b": [1]}), mode="append", schema_mode="merge"
    )
    assert settled_columns(uri) == {"id", "a", "b"}


EDGE_SCALARS = [
    pa.scalar(True),
    pa.scalar(-128, pa.int8()),
    pa.scalar(-(2**63), pa.int64()),
    pa.scalar(float("nan"), pa.float32()),
    pa.scalar(-0.0, pa.float64()),
    pa.scalar(float("-inf"), pa.float64()),
    pa.scalar(5e-324, pa.float64()),
    pa.scalar(Decimal("1E+2"), pa.decimal128(5, 0)),
    pa.scalar(Decimal("-0.000"), pa.decimal128(38, 3)),
    pa.scalar("it's `q` \\ \n ü", pa.string()),
    pa.scalar(b"\x00'\xff", pa.binary()),
    pa.scalar(dt.date(1, 1, 1), pa.date32()),
    pa.scalar(dt.datetime(1, 1, 1, 0, 0, 0, 1), pa.timestamp("us")),
    pa.scalar(
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC), pa.timestamp("us", "UTC")
    ),
]


def test_sql_literals_set_exactly_their_value_on_unmatched_rows(tmp_path: Path) -> None:
    uri = str(tmp_path / "m")
    values = {f"c{i}": value for i, value in enumerate(EDGE_SCALARS)}
    schema = pa.schema([("id", pa.int64())] + [(n, v.type) for n, v in values.items()])
    empty = pa.table({"id": pa.array([1, 2], pa.int64())})
    for name, value in values.items():
        empty = empty.append_column(pa.field(name, value.type), pa.nulls(2, value.type))
    write_deltalake(uri, empty, mode="overwrite", schema_mode="overwrite")
    source = empty.filter(pc.equal(empty["id"], 2))
    constants = {n: literal(v) for n, v in values.items()}
    assert all(constants.values())
    merger = DeltaTable(uri).merge(source, "t.id = s.id", source_alias="s", target_alias="t")
    merger.when_not_matched_by_source_update({n: c for n, c in constants.items() if c}).execute()
    table = DeltaTable(uri).to_pyarrow_table()
    assert table.schema == schema
    unmatched = table.filter(pc.equal(table["id"], 1))
    for name, value in values.items():
        landed = unmatched.column(name)[0]
        if value.as_py() != value.as_py():  # NaN
            assert landed.as_py() != landed.as_py(), name
            continue
        assert landed.equals(value), name
        if pa.types.is_floating(value.type):  # -0.0 stays negative
            assert math.copysign(1, landed.as_py()) == math.copysign(1, value.as_py()), name
    assert literal(pa.scalar([1], pa.list_(pa.int32()))) is None


def test_lookup_rows_composite_key(tmp_path: Path) -> None:
    uri = str(tmp_path / "m")
    schema = pa.schema([("a", pa.int64()), ("b", pa.string()), ("v", pa.string())])
    rows = [
        {"t": "insert", "lsn": 1, "seq": i, "a": i % 3, "b": str(i % 2), "v": f"v{i}"}
        for i in range(6)
    ]
    f = frame(rows, schema)
    merge_changes(uri, mirror_changes(f, ["a", "b"]), key_columns=["a", "b"], app_id=APP, version=1)
    keys = pa.table({"a": [0, 1, 2], "b": ["0", "1", "1"]})
    found = lookup_rows(uri, ["a", "b"], keys, columns=["v"])
    assert sorted(found.to_pylist(), key=lambda r: r["a"]) == [
        {"a": 0, "b": "0", "v": "v0"},
        {"a": 1, "b": "1", "v": "v1"},
        {"a": 2, "b": "1", "v": "v5"},
    ]
    assert lookup_rows(str(tmp_path / "none"), ["a", "b"], keys, columns=["v"]).num_rows == 0


# --- model check -----------------------------------------------------------------------------


class Model:
    """A plain Python Postgres table that emits the change frames pgoutput would."""

    def __init__(self, rng: random.Random, *, full: bool) -> None:
        self.rng, self.full = rng, full
        self.rows: dict[int, dict[str, Any]] = {}
        self.lsn, self.next_id = 0, 0

    def transaction(self) -> list[dict[str, Any]]:
        """A few random changes as one source transaction, applied to the model."""
        self.lsn += 10
        events: list[dict[str, Any]] = []
        for seq in range(self.rng.randint(1, 6)):
            events += self._change(seq)
        return events

    def _change(self, seq: int) -> list[dict[str, Any]]:
        head = {"lsn": self.lsn, "seq": seq}
        roll = self.rng.random()
        if roll < 0.02:
            self.rows.clear()
            return [{"t": "truncate", **head}]
        if roll < 0.3 or not self.rows:
            self.next_id += 1
            row = {"id": self.next_id, "order": f"o{self.lsn}", "My Col": seq, "doc": f"d{seq}"}
            self.rows[row["id"]] = row
            return [{"t": "insert", **head, **row}]
        key = self.rng.choice(sorted(self.rows))
        old = self.rows[key]
        if roll < 0.45:
            del self.rows[key]
            pre = dict(old) if self.full else {"id": key}
            return [{"t": "delete", **head, **pre}]
        new = dict(old, order=f"u{self.lsn}.{seq}")
        if roll < 0.55:
            self.next_id += 1
            new["id"] = self.next_id
        toast = self.rng.random() < 0.5
        if not toast:
            new["doc"] = f"d{self.lsn}.{seq}"
        del self.rows[key]
        self.rows[new["id"]] = new
        post = dict(new, doc=None, u=["doc"]) if toast else new
        out = [{"t": "update_postimage", **head, **post}]
        if self.full:
            out.insert(0, {"t": "update_preimage", **head, **old})
        elif new["id"] != key:
            out.insert(0, {"t": "update_preimage", **head, "id": key})
        return out


@pytest.mark.parametrize("full", [False, True])
def test_merged_frames_equal_python_model(tmp_path: Path, full: bool) -> None:
    rng = random.Random(7 if full else 11)
    model = Model(rng, full=full)
    mirror_uri, history_uri = str(tmp_path / "m"), str(tmp_path / "h")
    history_count = 0
    for flush in range(12):
        events = [e for _ in range(rng.randint(1, 8)) for e in model.transaction()]
        f = frame(events)
        # the pipeline's order: fill the frame from the mirror, then history and mirror
        prior = lookup_rows(mirror_uri, ["id"], unfilled_keys(f, ["id"]), columns=["doc"])
        filled = fill_unchanged(f, ["id"], prior=prior)
        assert filled.column("_pg_unchanged").null_count == filled.num_rows
        append_changes(history_uri, history_rows(filled), app_id=APP, version=model.lsn)
        merge_changes(
            mirror_uri,
            mirror_changes(filled, ["id"]),
            key_columns=["id"],
            app_id=APP,
            version=model.lsn,
        )
        history_count += f.num_rows
        got = {
            k: {c: v[c] for c in ("id", "order", "My Col", "doc")}
            for k, v in mirror(mirror_uri).items()
        }
        assert got == model.rows, f"flush {flush}"
        assert transaction_version(mirror_uri, APP) == model.lsn
    history = DeltaTable(history_uri).to_pyarrow_table()
    assert history.num_rows == history_count
    posts = [r for r in history.to_pylist() if r["_pg_change_type"] == "update_postimage"]
    assert posts and all(r["doc"] is not None for r in posts)


def test_unfilled_mirror_toast_kept_across_frames(tmp_path: Path) -> None:
    """Without the prior fill, `_keep_doc` alone keeps the mirror right (same-key updates)."""
    rng = random.Random(3)
    uri = str(tmp_path / "m")
    rows: dict[int, dict[str, Any]] = {}
    lsn = 0
    for _ in range(10):
        events = []
        for seq in range(20):
            lsn += 1
            key = rng.randint(1, 15)
            if key not in rows:
                rows[key] = {"id": key, "doc": f"d{lsn}", "order": "i"}
                events.append({"t": "insert", "lsn": lsn, "seq": seq, **rows[key]})
            elif rng.random() < 0.6:
                rows[key]["order"] = f"u{lsn}"
                events.append(
                    {
                        "t": "update_postimage",
                        "lsn": lsn,
                        "seq": seq,
                        "id": key,
                        "order": rows[key]["order"],
                        "u": ["doc"],
                    }
                )
            else:
                rows[key]["doc"] = f"d{lsn}"
                events.append({"t": "update_postimage", "lsn": lsn, "seq": seq, **rows[key]})
        merge_changes(
            uri, mirror_changes(frame(events), ["id"]), key_columns=["id"], app_id=APP, version=lsn
        )
        got = {k: {c: v[c] for c in ("id", "doc", "order")} for k, v in mirror(uri).items()}
        assert got == rows
