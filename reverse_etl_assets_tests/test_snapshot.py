"""Snapshot syncs against a real Postgres and real Delta tables: exact values, atomic swaps,
and every bad-data path leaving the previous table untouched."""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from reverse_etl_assets.errors import DataError, SourceError, SpecError
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.postgres.state import TableState, read_state
from reverse_etl_assets_tests.helpers import fetch, one_table, rows_of, table_exists, write_delta

UTC = dt.UTC
MAX_DEC = Decimal("99999999999999999999.999999999999999999")
MIN_DEC = Decimal("-99999999999999999999.999999999999999999")  # not -MAX_DEC: 28-digit context


def items(ids: list[int], names: list[str | None] | None = None) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "name": pa.array(names if names is not None else [f"n{i}" for i in ids], pa.string()),
        }
    )


def state_of(dsn: str, name: str = "lakebase.gold.items_synced") -> TableState:
    with psycopg.connect(dsn) as conn:
        stored = read_state(conn, name)
    assert stored is not None
    return stored


def test_every_type_round_trips_exactly(tmp_path: Path, pg_dsn: str) -> None:
    struct_type = pa.struct([("a", pa.int64()), ("b", pa.string())])
    data = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "i32": pa.array([2**31 - 1, -(2**31), None], pa.int32()),
            "i16": pa.array([2**15 - 1, -(2**15), None], pa.int16()),
            "i8": pa.array([127, -128, None], pa.int8()),
            "flag": pa.array([True, False, None]),
            "f32": pa.array([1.5, -0.25, None], pa.float32()),
            "f64": pa.array([math.nan, math.inf, -math.inf], pa.float64()),
            "dec": pa.array([MAX_DEC, MIN_DEC, None], pa.decimal128(38, 18)),
            "txt": pa.array(["héllo 👋 ünïcode", "", None]),
            "bin": pa.array([b"\x00\x01\xff", b"", None]),
            "day": pa.array([dt.date(1, 1, 1), dt.date(9999, 12, 31), None]),
            "ts": pa.array(
                [
                    dt.datetime(1, 1, 1, tzinfo=UTC),
                    dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                    None,
                ],
                pa.timestamp("us", "UTC"),
            ),
            "ntz": pa.array(
                [dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999), None],
                pa.timestamp("us"),
            ),
            "arr": pa.array([[1, None, 3], [], None], pa.list_(pa.int64())),
            "mp": pa.array([[("k", 1)], [], None], pa.map_(pa.string(), pa.int64())),
            "st": pa.array([{"a": 1, "b": None}, None, {"a": None, "b": "x"}], struct_type),
        }
    )
    write_delta(tmp_path / "src", data)
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    result = sync_table(table, pg_dsn)
    assert (result.rows, result.version, result.path) == (3, 0, "snapshot")

    types = dict(
        fetch(
            pg_dsn,
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'gold.items_synced'::regclass AND attnum > 0",
        )
    )
    assert types == {
        "id": "bigint", "i32": "integer", "i16": "smallint", "i8": "smallint", "flag": "boolean",
        "f32": "real", "f64": "double precision", "dec": "numeric(38,18)", "txt": "text",
        "bin": "bytea", "day": "date", "ts": "timestamp with time zone",
        "ntz": "timestamp without time zone", "arr": "jsonb", "mp": "jsonb", "st": "jsonb",
    }  # fmt: skip
    rows = rows_of(pg_dsn, "gold", "items_synced", "id")
    first, second, third = rows
    assert first[1:4] == (2**31 - 1, 2**15 - 1, 127)
    assert second[1:4] == (-(2**31), -(2**15), -128)
    assert third[1:4] == (None, None, None)
    assert (first[4], second[4], third[4]) == (True, False, None)
    assert (first[5], second[5]) == (1.5, -0.25)
    assert math.isnan(first[6]) and second[6] == math.inf and third[6] == -math.inf
    assert (first[7], second[7], third[7]) == (MAX_DEC, MIN_DEC, None)
    assert (first[8], second[8], third[8]) == ("héllo 👋 ünïcode", "", None)
    assert (bytes(first[9]), bytes(second[9]), third[9]) == (b"\x00\x01\xff", b"", None)
    assert (first[10], second[10]) == (dt.date(1, 1, 1), dt.date(9999, 12, 31))
    assert first[11] == dt.datetime(1, 1, 1, tzinfo=UTC)
    assert second[11] == dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert second[12] == dt.datetime(9999, 12, 31, 23, 59, 59, 999999)
    assert (first[13], second[13], third[13]) == ([1, None, 3], [], None)
    assert (first[14], second[14], third[14]) == ({"k": 1}, {}, None)
    assert (first[15], second[15], third[15]) == ({"a": 1, "b": None}, None, {"a": None, "b": "x"})


def test_resync_swaps_and_keeps_grants_views_and_indexes(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items([1, 2]))
    table = one_table(
        tmp_path, source=str(src), primary_key=["id"], indexes=[["name"]], readers=["app_reader"]
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE ROLE app_reader")
        conn.execute("CREATE ROLE analyst")
    try:
        sync_table(table, pg_dsn)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("GRANT SELECT ON gold.items_synced TO analyst")
            conn.execute("CREATE VIEW public.item_names AS SELECT name FROM gold.items_synced")
        write_delta(src, items([3, 4, 5]), mode="overwrite")
        result = sync_table(table, pg_dsn)
        assert (result.version, result.rows) == (1, 3)
        assert fetch(pg_dsn, "SELECT name FROM public.item_names ORDER BY 1") == [
            ("n3",), ("n4",), ("n5",)
        ]  # fmt: skip
        grants = fetch(
            pg_dsn,
            "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
            "WHERE table_schema = 'gold' AND table_name = 'items_synced' "
            "AND grantee <> current_user ORDER BY 1",
        )
        assert grants == [("analyst", "SELECT"), ("app_reader", "SELECT")]
        indexes = fetch(
            pg_dsn,
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'gold' ORDER BY 1",
        )
        assert indexes == [("items_synced_name_idx",), ("items_synced_pkey",)]
        tables = fetch(pg_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'gold'")
        assert tables == [("items_synced",)]  # no staging or retired table left behind
        assert state_of(pg_dsn).last_synced_version == 1
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DROP VIEW IF EXISTS public.item_names")
            conn.execute("DROP OWNED BY app_reader, analyst")
            conn.execute("DROP ROLE app_reader")
            conn.execute("DROP ROLE analyst")


def test_duplicate_keys_fail_and_leave_previous_table(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items([1, 2]))
    table = one_table(tmp_path, source=str(src), primary_key=["id"])
    sync_table(table, pg_dsn)
    write_delta(src, items([2, 3, 3]))
    with pytest.raises(DataError) as info:
        sync_table(table, pg_dsn)
    message = str(info.value)
    assert "lakebase.gold.items_synced" in message and "duplicate primary key ['id']" in message
    assert "{'id': 3} x2" in message and "{'id': 2} x2" in message
    assert rows_of(pg_dsn, "gold", "items_synced", "id") == [(1, "n1"), (2, "n2")]
    stored = state_of(pg_dsn)
    assert stored.state == states.ONLINE_PIPELINE_FAILED and stored.last_synced_version == 0
    assert "duplicate primary key" in stored.message
    assert not table_exists(pg_dsn, "gold", "items_synced__retl_new")


def test_first_sync_failure_is_offline_failed(tmp_path: Path, pg_dsn: str) -> None:
    write_delta(tmp_path / "src", items([7, 7]))
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    with pytest.raises(DataError, match=r"\{'id': 7\} x2"):
        sync_table(table, pg_dsn)
    assert state_of(pg_dsn).state == states.OFFLINE_FAILED
    assert not table_exists(pg_dsn, "gold", "items_synced")


def test_timeseries_key_keeps_latest_row(tmp_path: Path, pg_dsn: str) -> None:
    data = pa.table(
        {
            "id": pa.array([1, 1, 2, 1], pa.int64()),
            "v": ["old", "newest", "only", "middle"],
            "at": pa.array([1, 3, 1, 2], pa.int64()),
        }
    )
    write_delta(tmp_path / "src", data)
    table = one_table(
        tmp_path, source=str(tmp_path / "src"), primary_key=["id"], timeseries_key="at"
    )
    assert sync_table(table, pg_dsn).rows == 2
    assert rows_of(pg_dsn, "gold", "items_synced", "id") == [(1, "newest", 3), (2, "only", 1)]


def test_timeseries_tie_is_a_duplicate(tmp_path: Path, pg_dsn: str) -> None:
    data = pa.table({"id": pa.array([1, 1], pa.int64()), "at": pa.array([5, 5], pa.int64())})
    write_delta(tmp_path / "src", data)
    table = one_table(
        tmp_path, source=str(tmp_path / "src"), primary_key=["id"], timeseries_key="at"
    )
    with pytest.raises(DataError, match="share the latest timeseries_key"):
        sync_table(table, pg_dsn)


def test_null_keys_are_skipped_and_counted(tmp_path: Path, pg_dsn: str) -> None:
    data = pa.table({"a": pa.array([1, None, 2, 3], pa.int64()), "b": ["x", "y", None, "z"]})
    write_delta(tmp_path / "src", data)
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["a", "b"])
    result = sync_table(table, pg_dsn)
    assert (result.rows, result.skipped_null_keys) == (2, 2)
    assert rows_of(pg_dsn, "gold", "items_synced", "a") == [(1, "x"), (3, "z")]
    assert state_of(pg_dsn).skipped_null_keys == 2


def test_nul_bytes_fail_by_default_and_name_column_and_key(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items([1]))
    table = one_table(tmp_path, source=str(src), primary_key=["id"])
    sync_table(table, pg_dsn)
    write_delta(src, items([2, 3], ["ok", "bad\x00byte"]))
    with pytest.raises(DataError) as info:
        sync_table(table, pg_dsn)
    assert "column 'name'" in str(info.value) and "{'id': 3}" in str(info.value)
    assert "on_invalid_characters: strip" in str(info.value)
    assert rows_of(pg_dsn, "gold", "items_synced", "id") == [(1, "n1")]


def test_nul_bytes_stripped_in_text_and_json(tmp_path: Path, pg_dsn: str) -> None:
    data = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "txt": ["a\x00b", "\x00\x00"],
            "tags": pa.array([["x\x00y", "\\u0000 literal"], []], pa.list_(pa.string())),
        }
    )
    write_delta(tmp_path / "src", data)
    table = one_table(
        tmp_path, source=str(tmp_path / "src"), primary_key=["id"], on_invalid_characters="strip"
    )
    sync_table(table, pg_dsn)
    rows = rows_of(pg_dsn, "gold", "items_synced", "id")
    # The escaped backslash text "\u0000 literal" is data, not a NUL: it survives.
    assert rows == [(1, "ab", ["xy", "\\u0000 literal"]), (2, "", [])]


def test_nul_in_nested_value_fails(tmp_path: Path, pg_dsn: str) -> None:
    data = pa.table({"id": pa.array([9], pa.int64()), "tags": pa.array([["a\x00"]])})
    write_delta(tmp_path / "src", data)
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    with pytest.raises(DataError, match=r"column 'tags'.*\{'id': 9\}"):
        sync_table(table, pg_dsn)


def test_hostile_column_names_are_quoted(tmp_path: Path, pg_dsn: str) -> None:
    hostile = 'x"; DROP TABLE gold.victim; --'
    data = pa.table(
        {
            "Mixed Case": pa.array([1, 2], pa.int64()),
            "select": ["a", "b"],
            hostile: ["c", "d"],
            "ünï": [1.0, 2.0],
        }
    )
    write_delta(tmp_path / "src", data)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA gold; CREATE TABLE gold.victim (x int)")
    table = one_table(
        tmp_path, source=str(tmp_path / "src"), primary_key=["Mixed Case"], indexes=[[hostile]]
    )
    sync_table(table, pg_dsn)
    assert rows_of(pg_dsn, "gold", "items_synced", "Mixed Case") == [
        (1, "a", "c", 1.0),
        (2, "b", "d", 2.0),
    ]
    assert table_exists(pg_dsn, "gold", "victim")


def test_partition_columns_come_through(tmp_path: Path, pg_dsn: str) -> None:
    data = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "region": ["eu", "us", "eu"]})
    from deltalake import write_deltalake

    write_deltalake(str(tmp_path / "src"), data, partition_by=["region"])
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    sync_table(table, pg_dsn)
    assert rows_of(pg_dsn, "gold", "items_synced", "id") == [(1, "eu"), (2, "us"), (3, "eu")]


def test_a_column_added_after_older_files_reads_as_null_in_them(
    tmp_path: Path, pg_dsn: str
) -> None:
    from deltalake import write_deltalake

    src = tmp_path / "src"
    write_delta(src, items([1, 2]))
    wider = items([3]).append_column("score", pa.array([1.5]))
    write_deltalake(str(src), wider, mode="append", schema_mode="merge")
    table = one_table(tmp_path, source=str(src), primary_key=["id"])
    assert sync_table(table, pg_dsn).path == "snapshot"
    got = rows_of(pg_dsn, "gold", "items_synced", "id")
    assert got == [(1, "n1", None), (2, "n2", None), (3, "n3", 1.5)]


def test_empty_source_gives_empty_table(tmp_path: Path, pg_dsn: str) -> None:
    write_delta(tmp_path / "src", items([]))
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    assert sync_table(table, pg_dsn).rows == 0
    assert rows_of(pg_dsn, "gold", "items_synced", "id") == []


def test_missing_source_and_columns_are_clear(tmp_path: Path, pg_dsn: str) -> None:
    missing = one_table(tmp_path, source=str(tmp_path / "nowhere"), primary_key=["id"])
    with pytest.raises(SourceError, match="no Delta table at"):
        sync_table(missing, pg_dsn)
    write_delta(tmp_path / "src", items([1]), cdf=False)
    bad_key = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["user_id"])
    with pytest.raises(SpecError, match=r"`primary_key` names column\(s\) \['user_id'\]"):
        sync_table(bad_key, pg_dsn)
    no_cdf = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"], mode="triggered")
    with pytest.raises(SpecError) as info:
        sync_table(no_cdf, pg_dsn)
    assert "reverse-etl enable-cdf" in str(info.value)
    assert "delta.enableChangeDataFeed = true" in str(info.value)
    assert not table_exists(pg_dsn, "gold", "items_synced")


def test_readers_see_old_or_new_table_never_partial(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items(list(range(1000))))
    table = one_table(tmp_path, source=str(src), primary_key=["id"])
    sync_table(table, pg_dsn)
    seen: set[int] = set()
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                while not done.is_set():
                    seen.add(conn.execute("SELECT count(*) FROM gold.items_synced").fetchone()[0])
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for size in (2000, 1000, 3000):
            write_delta(src, items(list(range(size))), mode="overwrite")
            sync_table(table, pg_dsn)
    finally:
        done.set()
        reader.join()
    assert not errors
    assert 1000 in seen and seen <= {1000, 2000, 3000}  # never 0, never a partial count


def test_swap_waits_for_a_reader_then_succeeds(tmp_path: Path, pg_dsn: str) -> None:
    src = tmp_path / "src"
    write_delta(src, items([1]))
    table = one_table(tmp_path, source=str(src), primary_key=["id"])
    sync_table(table, pg_dsn)
    write_delta(src, items([1, 2]), mode="overwrite")
    blocker = psycopg.connect(pg_dsn)
    blocker.execute("SELECT * FROM gold.items_synced").fetchall()  # holds ACCESS SHARE
    release = threading.Timer(3.0, blocker.rollback)
    release.start()
    started = time.monotonic()
    try:
        result = sync_table(table, pg_dsn)
    finally:
        release.join()
        blocker.close()
    assert result.rows == 2 and time.monotonic() - started >= 2.5
    assert rows_of(pg_dsn, "gold", "items_synced", "id") == [(1, "n1"), (2, "n2")]


def test_parallel_load_over_several_connections(tmp_path: Path, pg_dsn: str) -> None:
    n = 600_000
    write_delta(tmp_path / "src", pa.table({"id": pa.array(range(n), pa.int64())}))
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"], max_connections=3)
    assert sync_table(table, pg_dsn).rows == n
    total, distinct, low, high = fetch(
        pg_dsn, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM gold.items_synced"
    )[0]
    assert (total, distinct, low, high) == (n, n, 0, n - 1)


def test_json_nested_values_in_postgres_are_queryable(tmp_path: Path, pg_dsn: str) -> None:
    data = pa.table(
        {
            "id": pa.array([1], pa.int64()),
            "m": pa.array([[("k", 2.5)]], pa.map_(pa.string(), pa.float64())),
        }
    )
    write_delta(tmp_path / "src", data)
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    sync_table(table, pg_dsn)
    assert fetch(pg_dsn, "SELECT (m->>'k')::float, jsonb_typeof(m) FROM gold.items_synced") == [
        (2.5, "object")
    ]
    assert json.loads(json.dumps(rows_of(pg_dsn, "gold", "items_synced", "id")[0][1])) == {"k": 2.5}
