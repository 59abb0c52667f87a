"""Increments, snapshots and the follower land the same table: Postgres equals the Delta version
whatever path ran (key changes, timeseries keys, NULL keys, NUL bytes in keys), against real
Postgres and real Delta tables."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from reverse_etl_assets.delta.reader import open_source
from reverse_etl_assets.errors import DataError, SpecError
from reverse_etl_assets.pipelines.delta_to_postgres.follow import follow_table
from reverse_etl_assets.pipelines.delta_to_postgres.preflight import check_source
from reverse_etl_assets.pipelines.delta_to_postgres.result import SyncResult
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.spec import SyncedTable
from reverse_etl_assets_tests.helpers import (
    delta_rows,
    fetch,
    items,
    one_table,
    postgres_rows,
    stored_state,
    write_delta,
)

NAME = "lakebase.gold.items_synced"


def triggered(tmp_path: Path, src: Path, **extra: object) -> SyncedTable:
    extra.setdefault("primary_key", ["id"])
    extra.setdefault("full_refresh_threshold", 1.0)
    return one_table(tmp_path, source=str(src), mode="triggered", **extra)


def test_an_update_of_the_key_removes_the_old_key(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(10)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    DeltaTable(str(src)).update(updates={"id": "id + 1000"}, predicate="id < 3")
    assert sync_table(table, pg_dsn).path == "incremental"
    assert postgres_rows(pg_dsn) == delta_rows(src)
    # moved away and back within one range
    DeltaTable(str(src)).update(updates={"id": "id + 100"}, predicate="id = 5")
    DeltaTable(str(src)).update(updates={"id": "id - 1100"}, predicate="id = 1001")
    assert sync_table(table, pg_dsn).path == "incremental"
    assert postgres_rows(pg_dsn) == delta_rows(src)
    assert stored_state(pg_dsn).rows == 10


def test_an_update_of_one_key_column_of_a_composite_key(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    data = pa.table(
        {
            "id": pa.array([1, 1, 2], pa.int64()),
            "part": pa.array(["a", "b", "a"]),
            "v": pa.array(["x", "y", "z"]),
        }
    )
    write_delta(src, data)
    table = triggered(tmp_path, src, primary_key=["id", "part"])
    sync_table(table, pg_dsn)
    DeltaTable(str(src)).update(updates={"part": "'c'"}, predicate="id = 1 AND part = 'b'")
    assert sync_table(table, pg_dsn).path == "incremental"
    got = sorted(postgres_rows(pg_dsn))
    assert got == [(1, "a", "x"), (1, "c", "y"), (2, "a", "z")]


FILLER = [(i, 0, "filler") for i in range(100, 120)]  # so a few changes stay an increment


def events(rows: list[tuple[int | None, int, str]]) -> pa.Table:
    ids, ts, vs = zip(*rows, strict=True)
    return pa.table(
        {"id": pa.array(ids, pa.int64()), "ts": pa.array(ts, pa.int64()), "v": pa.array(vs)}
    )


def latest_per_key(src: Path) -> list[tuple[object, ...]]:
    """What Postgres must hold: the latest remaining row per (non-NULL) key of the Delta table."""
    best: dict[object, tuple[object, ...]] = {}
    for row in delta_rows(src):
        if row[0] is not None and (row[0] not in best or row[1] > best[row[0]][1]):  # type: ignore[operator]
            best[row[0]] = row
    return [best[k] for k in sorted(best) if k not in dict.fromkeys(r[0] for r in FILLER)]  # type: ignore[type-var]


def synced_events(dsn: str) -> list[tuple[object, ...]]:
    return [r for r in postgres_rows(dsn) if r[2] != "filler"]


def test_timeseries_keeps_the_latest_remaining_row(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, events([(1, 1, "a1"), (1, 2, "a2"), (2, 5, "b5"), (3, 1, "c1"), *FILLER]))
    table = triggered(tmp_path, src, timeseries_key="ts")
    sync_table(table, pg_dsn)
    assert synced_events(pg_dsn) == latest_per_key(src)
    # the latest event of key 1 is deleted: its older event remains
    DeltaTable(str(src)).delete("id = 1 AND ts = 2")
    assert sync_table(table, pg_dsn).path == "incremental"
    assert (
        synced_events(pg_dsn) == latest_per_key(src) == [(1, 1, "a1"), (2, 5, "b5"), (3, 1, "c1")]
    )
    # the only row of key 2 is rewritten with an older timestamp
    DeltaTable(str(src)).update(updates={"ts": "3", "v": "'b3'"}, predicate="id = 2")
    assert sync_table(table, pg_dsn).path == "incremental"
    assert synced_events(pg_dsn) == latest_per_key(src)
    assert synced_events(pg_dsn)[1] == (2, 3, "b3")
    # every event of key 3 deleted: the key goes
    DeltaTable(str(src)).delete("id = 3")
    assert sync_table(table, pg_dsn).path == "incremental"
    assert synced_events(pg_dsn) == latest_per_key(src)


def test_timeseries_late_older_event_in_a_later_version_does_not_win(
    tmp_path: Path, pg_dsn: str
) -> None:
    src = tmp_path / "src"
    write_delta(src, events([(1, 1, "a1"), *FILLER]))
    table = triggered(tmp_path, src, timeseries_key="ts")
    sync_table(table, pg_dsn)
    write_delta(src, events([(2, 10, "b10")]))
    write_delta(src, events([(2, 4, "b4"), (1, 0, "a0")]))  # late, older events
    assert sync_table(table, pg_dsn).path == "incremental"
    assert synced_events(pg_dsn) == latest_per_key(src) == [(1, 1, "a1"), (2, 10, "b10")]


def test_timeseries_late_events_tied_below_the_synced_row(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, events([(1, 9, "a9"), *FILLER]))
    table = triggered(tmp_path, src, timeseries_key="ts")
    sync_table(table, pg_dsn)
    # Two late events of key 1 share a time older than its synced row: no tie on the latest.
    write_delta(src, events([(1, 4, "a4"), (1, 4, "a4'")]))
    assert sync_table(table, pg_dsn).path == "incremental"
    assert synced_events(pg_dsn) == latest_per_key(src) == [(1, 9, "a9")]


def test_timeseries_rows_replaced_by_older_ones(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, events([(1, 9, "a9"), (2, 9, "b9"), *FILLER]))
    table = triggered(tmp_path, src, timeseries_key="ts")
    sync_table(table, pg_dsn)
    DeltaTable(str(src)).delete("id < 100")
    write_delta(src, events([(1, 1, "a1"), (1, 2, "a2"), (3, 1, "c1")]))
    assert sync_table(table, pg_dsn).path == "incremental"
    assert synced_events(pg_dsn) == latest_per_key(src) == [(1, 2, "a2"), (3, 1, "c1")]
    # an overwrite (past the threshold: a snapshot) lands the same rule
    write_delta(src, events([(1, 1, "a1"), (1, 0, "a0"), (4, 1, "d1"), *FILLER]), mode="overwrite")
    sync_table(table, pg_dsn)
    assert synced_events(pg_dsn) == latest_per_key(src) == [(1, 1, "a1"), (4, 1, "d1")]
    assert stored_state(pg_dsn).rows == 22


def test_skipped_null_keys_counts_the_synced_version(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    data = pa.table({"id": pa.array([None, None, 1], pa.int64()), "v": ["n1", "n2", "a"]})
    write_delta(src, data)
    table = triggered(tmp_path, src)
    assert sync_table(table, pg_dsn).skipped_null_keys == 2
    # updates of NULL-key rows, a NULL-key row added then deleted: still 2 NULL-key rows
    DeltaTable(str(src)).update(updates={"v": "v || '!'"}, predicate="id IS NULL")
    write_delta(src, pa.table({"id": pa.array([None], pa.int64()), "v": ["n3"]}))
    DeltaTable(str(src)).delete("v = 'n3'")
    result = sync_table(table, pg_dsn)
    assert result.path == "incremental"
    assert result.skipped_null_keys == stored_state(pg_dsn).skipped_null_keys == 2
    assert sync_table(table, pg_dsn).skipped_null_keys == 2  # nothing to do: the same count
    # one NULL key gets a value: it lands, 1 NULL-key row is left
    DeltaTable(str(src)).update(updates={"id": "7"}, predicate="v = 'n1!'")
    assert (
        sync_table(table, pg_dsn).skipped_null_keys == stored_state(pg_dsn).skipped_null_keys == 1
    )
    assert postgres_rows(pg_dsn) == [(1, "a"), (7, "n1!")]
    full = sync_table(table, pg_dsn, full_refresh=True)
    assert full.skipped_null_keys == stored_state(pg_dsn).skipped_null_keys == 1


def test_nul_byte_in_a_string_key_is_stripped_in_deletes_too(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, pa.table({"k": ["a\x00b", "c"], "v": ["1", "2"]}))
    table = triggered(tmp_path, src, primary_key=["k"], on_invalid_characters="strip")
    sync_table(table, pg_dsn)
    DeltaTable(str(src)).update(updates={"v": "'updated'"}, predicate="v = '1'")
    assert sync_table(table, pg_dsn).path == "incremental"
    DeltaTable(str(src)).delete("v = 'updated'")
    assert sync_table(table, pg_dsn).path == "incremental"
    assert fetch(pg_dsn, "SELECT k, v FROM gold.items_synced ORDER BY k") == [("c", "2")]


def test_nul_byte_in_a_delete_key_under_fail(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, pa.table({"k": [f"k{i}" for i in range(20)], "v": ["1"] * 20}))
    table = triggered(tmp_path, src, primary_key=["k"])
    sync_table(table, pg_dsn)
    # Refused, then cleaned up by the source: the range nets to the delete of a key that never
    # landed, which deletes nothing and does not block the sync.
    write_delta(src, pa.table({"k": ["a\x00b"], "v": ["2"]}))
    with pytest.raises(DataError, match=r"column 'k' holds a NUL byte.*on_invalid_characters"):
        sync_table(table, pg_dsn)
    DeltaTable(str(src)).delete("v = '2'")
    assert sync_table(table, pg_dsn).path == "incremental"
    assert stored_state(pg_dsn).last_synced_version == 2
    assert fetch(pg_dsn, "SELECT count(*) FROM gold.items_synced") == [(20,)]
    # When the stripped key is another row's, the delete is ambiguous: refused, nothing changes.
    write_delta(src, pa.table({"k": ["ab"], "v": ["3"]}))
    assert sync_table(table, pg_dsn).path == "incremental"
    write_delta(src, pa.table({"k": ["a\x00b"], "v": ["4"]}))
    DeltaTable(str(src)).delete("v = '4'")
    with pytest.raises(DataError, match=r"column 'k' holds a NUL byte.*on_invalid_characters"):
        sync_table(table, pg_dsn)
    assert stored_state(pg_dsn).last_synced_version == 3
    assert fetch(pg_dsn, "SELECT k FROM gold.items_synced WHERE k = 'ab'") == [("ab",)]


def test_a_map_with_integer_keys_syncs_as_a_json_object(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    kind = pa.map_(pa.int32(), pa.string())
    scores = pa.struct([("by_year", pa.map_(pa.int16(), pa.float64()))])

    def rows(ids: list[int], tag: str) -> pa.Table:
        return pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "m": pa.array([[(i, tag), (i + 1, None)] for i in ids], kind),
                "s": pa.array([{"by_year": [(2024, 0.5)]} for _ in ids], scores),
            }
        )

    write_delta(src, rows(list(range(20)), "a"))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    write_delta(src, rows([50], "b"))
    assert sync_table(table, pg_dsn).path == "incremental"
    got = fetch(pg_dsn, "SELECT m, s FROM gold.items_synced WHERE id IN (3, 50) ORDER BY id")
    assert got == [
        ({"3": "a", "4": None}, {"by_year": {"2024": 0.5}}),
        ({"50": "b", "51": None}, {"by_year": {"2024": 0.5}}),
    ]


def test_source_columns_named_like_system_columns_are_refused(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    boxes = {"id": pa.array([1], pa.int64()), "xmin": [0.5], "xmax": [1.5], "ymin": [0.0]}
    write_delta(src, pa.table(boxes))
    table = triggered(tmp_path, src)
    source = open_source(str(src), storage_options={})
    refused = r"'lakebase\.gold\.items_synced': column 'xmin' has the name of a Postgres system"
    with pytest.raises(SpecError, match=refused):
        check_source(table, source)  # what `validate` runs
    with pytest.raises(SpecError, match=refused):
        sync_table(table, pg_dsn)
    assert fetch(pg_dsn, "SELECT to_regclass('gold.items_synced')") == [(None,)]


@pytest.mark.parametrize("name", ["_retl_invalid", "_retl_arriving", "_retl_mine"])
def test_source_columns_with_the_reserved_prefix_are_refused(
    tmp_path: Path, pg_dsn: str, name: str
) -> None:
    src = tmp_path / "src"
    write_delta(src, pa.table({"id": pa.array([1], pa.int64()), name: ["x"]}))
    table = triggered(tmp_path, src)
    refused = rf"source column '{name}' starts with '_retl_'.*rename it in the source"
    with pytest.raises(SpecError, match=refused):
        check_source(table, open_source(str(src), storage_options={}))
    with pytest.raises(SpecError, match=refused):
        sync_table(table, pg_dsn)
    assert fetch(pg_dsn, "SELECT to_regclass('gold.items_synced')") == [(None,)]


def test_system_column_names_in_another_case_are_ordinary_columns(
    tmp_path: Path, pg_dsn: str
) -> None:
    src = tmp_path / "src"
    write_delta(src, pa.table({"id": pa.array([1], pa.int64()), "XMIN": [0.5], "Ctid": ["a"]}))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    assert fetch(pg_dsn, 'SELECT id, "XMIN", "Ctid" FROM gold.items_synced') == [(1, 0.5, "a")]


def test_the_follower_lands_key_changes_and_timeseries_deletes(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, events([(1, 1, "a1"), (2, 1, "b1"), (2, 2, "b2"), *FILLER]))
    table = one_table(
        tmp_path,
        source=str(src),
        primary_key=["id"],
        mode="continuous",
        timeseries_key="ts",
        full_refresh_threshold=1.0,
        poll_interval_seconds=0.1,
    )
    assert follow_table(table, pg_dsn, max_seconds=0.5).version == 0
    DeltaTable(str(src)).update(updates={"id": "id + 1000"}, predicate="id = 1")
    DeltaTable(str(src)).delete("id = 2 AND ts = 2")
    landed: list[SyncResult] = []
    follow_table(table, pg_dsn, max_seconds=1.5, on_sync=landed.append)
    assert [r.path for r in landed] == ["incremental"]
    assert synced_events(pg_dsn) == latest_per_key(src) == [(2, 1, "b1"), (1001, 1, "a1")]


def test_a_nul_byte_fails_only_in_a_row_to_write(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(20)))
    table = triggered(tmp_path, src)
    sync_table(table, pg_dsn)
    # A value with a NUL byte that a later version of the range replaces never reaches Postgres.
    write_delta(src, pa.table({"id": pa.array([50], pa.int64()), "v": ["x\x00y"]}))
    DeltaTable(str(src)).update(updates={"v": "'clean'"}, predicate="id = 50")
    assert sync_table(table, pg_dsn).path == "incremental"
    assert postgres_rows(pg_dsn)[-1] == (50, "clean")
    # One that would be written fails the sync, naming column and key; nothing changes.
    write_delta(src, pa.table({"id": pa.array([51, 52], pa.int64()), "v": ["a\x00", "ok"]}))
    with pytest.raises(DataError, match=r"column 'v' holds a NUL byte .* key \{'id': 51\}"):
        sync_table(table, pg_dsn)
    assert stored_state(pg_dsn).last_synced_version == 2
    assert postgres_rows(pg_dsn)[-1] == (50, "clean")
