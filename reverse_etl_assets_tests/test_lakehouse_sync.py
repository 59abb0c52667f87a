"""Lakehouse syncs end to end against a real Postgres (wal_level = logical) and real Delta:
initial snapshot, drains, exactly once, TOAST, truncate, schema changes, a lost slot."""

from __future__ import annotations

import struct
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from reverse_etl_assets.delta.reader import open_source, read_rows_with_keys
from reverse_etl_assets.errors import DataError, SpecError
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.pipelines.postgres_to_delta.run import SlotLost, sync_lakehouse
from reverse_etl_assets.pipelines.postgres_to_delta.stream import ChangeStream
from reverse_etl_assets.spec import Spec, parse_spec
from reverse_etl_assets_tests.lakehouse_helpers import (
    delta_rows,
    execute,
    history,
    lakehouse_sync,
)

ORDERS = (
    "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2), "
    "placed_at timestamptz, note text)"
)


def pg_rows(dsn: str, table: str = "orders") -> list[dict[str, object]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(f"SELECT * FROM {table} ORDER BY id")  # type: ignore[arg-type]
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def test_first_sync_snapshots_then_each_sync_drains_exactly_once(
    pg_dsn: str, tmp_path: Path
) -> None:
    execute(
        pg_dsn,
        ORDERS,
        "INSERT INTO orders SELECT g, 'c' || g, g * 1.5, '2026-01-01'::timestamptz "
        "+ g * interval '1 hour', NULL FROM generate_series(1, 1000) g",
    )
    sync = lakehouse_sync(tmp_path)
    first = sync_lakehouse(sync, pg_dsn)
    assert first.path == "snapshot" and first.snapshot_rows == {"public.orders": 1000}
    mirror, log = sync.mirror_uri("orders"), sync.history_uri("orders")
    assert delta_rows(mirror) == pg_rows(pg_dsn)
    assert len(history(log)) == 1000
    assert {r["_pg_change_type"] for r in history(log)} == {"insert"}

    execute(
        pg_dsn,
        "UPDATE orders SET amount = 0, note = 'x' WHERE id <= 10",
        "DELETE FROM orders WHERE id BETWEEN 11 AND 15",
        "INSERT INTO orders VALUES (5000, 'new', 1, now(), 'n')",
        "BEGIN; INSERT INTO orders VALUES (5001, 'a', 1, now(), NULL); "
        "UPDATE orders SET customer = 'b' WHERE id = 5001; COMMIT",
    )
    second = sync_lakehouse(sync, pg_dsn)
    assert second.path == "stream"
    assert second.changes == {"delete": 5, "insert": 2, "update_postimage": 11}
    assert delta_rows(mirror) == pg_rows(pg_dsn)
    rows = history(log)
    assert len(rows) == 1000 + 18
    assert [r["_pg_change_type"] for r in rows[-2:]] == ["insert", "update_postimage"]
    assert rows[-1]["_pg_lsn"] == rows[-2]["_pg_lsn"]
    assert rows[-2]["_pg_seq"] < rows[-1]["_pg_seq"]

    third = sync_lakehouse(sync, pg_dsn)  # nothing new: nothing written twice
    assert third.path == "none"
    assert len(history(log)) == 1018


def test_truncate_and_toast_and_an_added_column(pg_dsn: str, tmp_path: Path) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text)",
        "INSERT INTO docs SELECT g, 't' || g, repeat(md5(g::text), 400) "
        "FROM generate_series(1, 5) g",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.docs"])
    sync_lakehouse(sync, pg_dsn)
    execute(pg_dsn, "UPDATE docs SET title = 'changed' WHERE id = 1")  # body unchanged: TOAST 'u'
    sync_lakehouse(sync, pg_dsn)
    mirror = delta_rows(sync.mirror_uri("docs"))
    assert mirror[0]["title"] == "changed"
    assert mirror[0]["body"] == pg_rows(pg_dsn, "docs")[0]["body"]
    post = [
        r for r in history(sync.history_uri("docs")) if r["_pg_change_type"] == "update_postimage"
    ]
    assert post[0]["body"] == mirror[0]["body"]  # never a NULL placeholder

    execute(
        pg_dsn,
        "ALTER TABLE docs ADD COLUMN tag text DEFAULT 'd'",
        "INSERT INTO docs VALUES (6, 'six', 'b', 'new')",
        "TRUNCATE docs",
        "INSERT INTO docs VALUES (7, 'seven', 'b', 't')",
    )
    sync_lakehouse(sync, pg_dsn)
    assert delta_rows(sync.mirror_uri("docs")) == pg_rows(pg_dsn, "docs")
    kinds = [r["_pg_change_type"] for r in history(sync.history_uri("docs"))]
    assert kinds[-3:] == ["insert", "truncate", "insert"]


def test_a_dropped_slot_is_a_failure_that_says_full_refresh(pg_dsn: str, tmp_path: Path) -> None:
    execute(pg_dsn, ORDERS, "INSERT INTO orders VALUES (1, 'a', 1, now(), NULL)")
    sync = lakehouse_sync(tmp_path)
    sync_lakehouse(sync, pg_dsn)
    execute(pg_dsn, "SELECT pg_drop_replication_slot('reverse_etl_app')")
    with pytest.raises(SlotLost, match="--full-refresh"):
        sync_lakehouse(sync, pg_dsn)
    execute(pg_dsn, "INSERT INTO orders VALUES (2, 'b', 1, now(), NULL)")
    refreshed = sync_lakehouse(sync, pg_dsn, full_refresh=True)
    assert refreshed.path == "snapshot"
    assert [r["id"] for r in delta_rows(sync.mirror_uri("orders"))] == [1, 2]


def test_a_crash_between_the_delta_commit_and_the_acknowledgement_writes_nothing_twice(
    pg_dsn: str, tmp_path: Path
) -> None:
    execute(pg_dsn, ORDERS, "INSERT INTO orders VALUES (1, 'a', 1, now(), NULL)")
    sync = lakehouse_sync(tmp_path)
    sync_lakehouse(sync, pg_dsn)
    execute(
        pg_dsn,
        "INSERT INTO orders VALUES (2, 'b', 2, now(), NULL)",
        "UPDATE orders SET amount = 9 WHERE id = 1",
    )
    stream = ChangeStream(sync, pg_dsn, failed_tables={})
    try:
        deadline = time.monotonic() + 30
        while stream.last_commit is None or stream.in_transaction or len(stream.pending) == 0:
            stream.receive(0.5)
            assert time.monotonic() < deadline
        for (schema, table), changes in stream.pending.items():
            stream._land(schema, table, changes)  # the Delta commits land ...
    finally:
        stream.stream.close()  # ... and the process dies before acknowledging
        stream.catalog.close()
    again = sync_lakehouse(sync, pg_dsn)  # the server sends those transactions again
    assert again.rows == 0
    rows = history(sync.history_uri("orders"))
    assert [r["_pg_change_type"] for r in rows] == ["insert", "insert", "update_postimage"]
    assert delta_rows(sync.mirror_uri("orders")) == pg_rows(pg_dsn)


def test_a_transaction_that_began_first_and_committed_last_lands_in_commit_order(
    pg_dsn: str, tmp_path: Path
) -> None:
    execute(pg_dsn, ORDERS)
    sync = lakehouse_sync(tmp_path)
    sync_lakehouse(sync, pg_dsn)
    with psycopg.connect(pg_dsn) as early:
        early.execute("INSERT INTO orders VALUES (1, 'early', 1, now(), NULL)")
        execute(pg_dsn, "INSERT INTO orders VALUES (2, 'late', 1, now(), NULL)")
        early.execute("UPDATE orders SET note = 'after 2' WHERE id = 1")
        early.commit()
    sync_lakehouse(sync, pg_dsn)
    rows = history(sync.history_uri("orders"))
    assert [(r["id"], r["_pg_change_type"]) for r in rows] == [
        (2, "insert"),
        (1, "insert"),
        (1, "update_postimage"),
    ]
    assert rows[1]["_pg_lsn"] == rows[2]["_pg_lsn"] > rows[0]["_pg_lsn"]
    assert delta_rows(sync.mirror_uri("orders")) == pg_rows(pg_dsn)


@pytest.mark.slow
def test_a_100k_row_transaction_lands_whole_in_one_commit(pg_dsn: str, tmp_path: Path) -> None:
    execute(pg_dsn, ORDERS)
    sync = lakehouse_sync(tmp_path)
    sync_lakehouse(sync, pg_dsn)
    execute(
        pg_dsn,
        "INSERT INTO orders SELECT g, 'c', g, now(), repeat('x', 50) "
        "FROM generate_series(1, 100000) g",
    )
    result = sync_lakehouse(sync, pg_dsn)
    assert result.changes == {"insert": 100_000}
    log = DeltaTable(sync.history_uri("orders"))
    versions = {r["_pg_lsn"] for r in history(sync.history_uri("orders"))}
    assert len(versions) == 1  # one source transaction ...
    assert len(log.history()) == 2  # ... in one Delta commit after the snapshot's
    assert len(delta_rows(sync.mirror_uri("orders"))) == 100_000


def test_key_changes_and_deletes_under_default_and_full_identity(
    pg_dsn: str, tmp_path: Path
) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE d (id int PRIMARY KEY, v text, big text)",
        "CREATE TABLE f (id int PRIMARY KEY, v text, big text)",
        "ALTER TABLE f REPLICA IDENTITY FULL",
        "INSERT INTO d SELECT g, 'v', repeat(md5(g::text), 300) FROM generate_series(1, 3) g",
        "INSERT INTO f SELECT g, 'v', repeat(md5(g::text), 300) FROM generate_series(1, 3) g",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.d", "public.f"])
    sync_lakehouse(sync, pg_dsn)
    for table in ("d", "f"):
        execute(
            pg_dsn,
            f"UPDATE {table} SET id = 10 WHERE id = 1",  # a key change, big unchanged (TOAST)
            f"UPDATE {table} SET v = 'w' WHERE id = 2",
            f"DELETE FROM {table} WHERE id = 3",
        )
    sync_lakehouse(sync, pg_dsn)
    for table in ("d", "f"):
        assert delta_rows(sync.mirror_uri(table)) == pg_rows(pg_dsn, table)
        rows = history(sync.history_uri(table))[3:]
        kinds = [r["_pg_change_type"] for r in rows]
        assert kinds == [
            "update_preimage",
            "update_postimage",
            *(["update_preimage"] if table == "f" else []),
            "update_postimage",
            "delete",
        ]
        full_images = [
            r for r in rows if r["_pg_change_type"] == "update_postimage" or table == "f"
        ]
        assert all(r["big"] is not None for r in full_images)  # TOAST never lands as NULL
        delete = rows[-1]
        assert delete["id"] == 3
        assert (delete["v"] is None) == (table == "d")  # DEFAULT: the key only


def test_a_type_delta_cannot_widen_stops_that_table_only(pg_dsn: str, tmp_path: Path) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE a (id int PRIMARY KEY, n int)",
        "CREATE TABLE b (id int PRIMARY KEY, n int)",
        "INSERT INTO a VALUES (1, 1)",
        "INSERT INTO b VALUES (1, 1)",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.a", "public.b"])
    sync_lakehouse(sync, pg_dsn)
    execute(
        pg_dsn,
        "INSERT INTO a VALUES (2, 2)",
        "ALTER TABLE a ALTER COLUMN n TYPE text",
        "INSERT INTO a VALUES (3, 'three')",
        "INSERT INTO b VALUES (2, 2)",
    )
    result = sync_lakehouse(sync, pg_dsn)
    assert list(result.failed_tables) == ["public.a"]
    message = result.failed_tables["public.a"]
    assert "'n'" in message and "--full-refresh" in message
    assert [r["id"] for r in delta_rows(sync.mirror_uri("b"))] == [1, 2]
    execute(pg_dsn, "INSERT INTO b VALUES (3, 3)")
    later = sync_lakehouse(sync, pg_dsn)
    assert [r["id"] for r in delta_rows(sync.mirror_uri("b"))] == [1, 2, 3]
    assert "public.a" in later.failed_tables
    refreshed = sync_lakehouse(sync, pg_dsn, full_refresh=True)
    assert refreshed.failed_tables == {}
    assert [r["n"] for r in delta_rows(sync.mirror_uri("a"))] == ["1", "2", "three"]


def test_a_value_delta_cannot_hold_fails_its_table_with_column_and_fix(
    pg_dsn: str, tmp_path: Path
) -> None:
    execute(
        pg_dsn, "CREATE TABLE e (id int PRIMARY KEY, day date)", "INSERT INTO e VALUES (1, now())"
    )
    sync = lakehouse_sync(tmp_path, tables=["public.e"])
    sync_lakehouse(sync, pg_dsn)
    execute(pg_dsn, "INSERT INTO e VALUES (2, 'infinity')")
    result = sync_lakehouse(sync, pg_dsn)
    message = result.failed_tables["public.e"]
    assert "day" in message and "infinity" in message and "--full-refresh" in message
    assert [r["id"] for r in delta_rows(sync.mirror_uri("e"))] == [1]


def loop_spec(tmp_path: Path, table: str) -> Spec:
    """A lakehouse sync of public.<table> into bronze.app, and a triggered synced table
    `serving.public.<table>_copy` reading its mirror back into Postgres."""
    return parse_spec(
        {
            "lake_root": str(tmp_path / "lake"),
            "lakehouse_syncs": [
                {"name": "app", "tables": [f"public.{table}"], "target": "bronze.app"}
            ],
            "synced_tables": [
                {
                    "name": f"serving.public.{table}_copy",
                    "source": f"bronze.app.{table}",
                    "primary_key": ["id"],
                    "mode": "triggered",
                }
            ],
        },
        path=tmp_path / "spec.yaml",
    )


def test_the_loop_closes_postgres_to_mirror_to_a_synced_table(pg_dsn: str, tmp_path: Path) -> None:
    execute(
        pg_dsn,
        ORDERS,
        "INSERT INTO orders SELECT g, 'c', g, now(), NULL FROM generate_series(1, 100) g",
    )
    sync = lakehouse_sync(tmp_path)
    sync_lakehouse(sync, pg_dsn)
    table = loop_spec(tmp_path, "orders").synced_tables[0]
    assert table.source_uri == sync.mirror_uri("orders")
    sync_table(table, pg_dsn)
    execute(
        pg_dsn,
        "INSERT INTO orders VALUES (200, 'b', 2, now(), 'x')",
        "UPDATE orders SET amount = 5 WHERE id = 1",
    )
    sync_lakehouse(sync, pg_dsn)
    result = sync_table(table, pg_dsn)
    assert result.path == "incremental"  # the mirror's Change Data Feed carries the changes
    assert pg_rows(pg_dsn, "orders_copy") == pg_rows(pg_dsn, "orders")


TYPES = """CREATE TABLE typed (
    id int PRIMARY KEY, b bool, s smallint, i int, l bigint, n numeric(38,18), nu numeric,
    r real, d double precision, t text, v varchar(5), c char(4), by bytea, dt date,
    ts timestamp, tz timestamptz, u uuid, j jsonb, ia int[], ta text[], iv interval)"""
EDGES = [
    "INSERT INTO typed VALUES (1, true, -32768, -2147483648, -9223372036854775808, "
    "'-99999999999999999999.999999999999999999', '123456789012345678901234567890.5', "
    "'-Infinity', 'NaN', '', 'ab', 'x', '\\x00ff', '0001-01-01', '0001-01-01 00:00:00', "
    "'9999-12-31 23:59:59.999999+00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
    "'{\"k\": [1, null]}', '{1,NULL,3}', '{\"a,b\",\"q\\\"\",NULL}', '1 day 02:00:00')",
    "INSERT INTO typed VALUES (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
    "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    "INSERT INTO typed (id, t, d, r, dt, tz) VALUES (3, 'üñí😀 \n\t\\', 1.5e308, 3.4e38, "
    "'9999-12-31', '2026-01-01 12:00:00+05:30')",
]


def test_every_mapped_type_lands_with_its_edge_values(pg_dsn: str, tmp_path: Path) -> None:
    execute(pg_dsn, TYPES, EDGES[0])
    sync = lakehouse_sync(tmp_path, tables=["public.typed"])
    sync_lakehouse(sync, pg_dsn)  # row 1 through the snapshot's COPY ...
    execute(pg_dsn, *EDGES[1:])  # ... rows 2 and 3 through the stream
    sync_lakehouse(sync, pg_dsn)
    landed = delta_rows(sync.mirror_uri("typed"))
    expected = pg_rows(pg_dsn, "typed")
    assert len(landed) == len(expected) == 3
    for got, want in zip(landed, expected, strict=True):
        for column, value in want.items():
            if column in ("j", "u", "iv", "nu"):  # kept as their Postgres text form
                assert got[column] == (None if value is None else got[column]), column
                continue
            if isinstance(value, float) and value != value:
                assert got[column] != got[column], column  # NaN stays NaN
                continue
            if column == "r" and value is not None:  # real is float32: compare as float32
                value = struct.unpack("f", struct.pack("f", value))[0]
            assert got[column] == value, (column, got[column], value)
    assert landed[0]["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert landed[0]["nu"] == "123456789012345678901234567890.5"
    assert landed[0]["iv"] == "1 day 02:00:00"
    assert landed[0]["c"] == "x   "  # char(n) keeps its pad blanks
    stream_rows = history(sync.history_uri("typed"))[1:]
    assert [r["_pg_change_type"] for r in stream_rows] == ["insert", "insert"]


def test_a_dropped_column_stays_in_delta_null_from_then_on(pg_dsn: str, tmp_path: Path) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE p (id int PRIMARY KEY, keep text, gone text)",
        "INSERT INTO p VALUES (1, 'a', 'x'), (2, 'b', 'y')",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.p"])
    sync_lakehouse(sync, pg_dsn)
    execute(
        pg_dsn,
        "UPDATE p SET keep = 'a2' WHERE id = 1",
        "ALTER TABLE p DROP COLUMN gone",
        "UPDATE p SET keep = 'b2' WHERE id = 2",
        "INSERT INTO p VALUES (3, 'c')",
    )
    sync_lakehouse(sync, pg_dsn)
    mirror = delta_rows(sync.mirror_uri("p"))
    assert [(r["id"], r["keep"], r["gone"]) for r in mirror] == [
        (1, "a2", "x"),  # changed before the drop: still carries the value
        (2, "b2", None),  # changed after: NULL from then on
        (3, "c", None),
    ]
    rows = history(sync.history_uri("p"))[2:]
    assert [(r["id"], r["gone"]) for r in rows] == [(1, "x"), (2, None), (3, None)]


def test_an_added_timestamp_column_without_zone_lands_and_follows_back(
    pg_dsn: str, tmp_path: Path
) -> None:
    """A Postgres `timestamp` (Delta timestamp_ntz) added to a synced table: Delta needs a table
    feature for it, which delta-rs sets when it creates a table but not when a write adds the
    column; the sync used to stop on every later drain."""
    execute(
        pg_dsn,
        "CREATE TABLE stamped (id int PRIMARY KEY, v text)",
        "INSERT INTO stamped VALUES (1, 'a'), (2, 'b')",
    )
    spec = loop_spec(tmp_path, "stamped")
    sync, copy = spec.lakehouse_syncs[0], spec.synced_tables[0]
    sync_lakehouse(sync, pg_dsn)
    sync_table(copy, pg_dsn)
    execute(
        pg_dsn,
        "ALTER TABLE stamped ADD COLUMN at timestamp DEFAULT '2024-01-01 10:00:00.5', "
        "ADD COLUMN ats timestamp[]",
        "INSERT INTO stamped VALUES (3, 'c', '2025-06-30 23:59:59.999999', "
        "'{2000-01-01 00:00:00,NULL}')",
        "UPDATE stamped SET v = 'b2' WHERE id = 2",
    )
    mirror = DeltaTable(sync.mirror_uri("stamped"))
    before = mirror.version()
    sync_lakehouse(sync, pg_dsn)
    assert delta_rows(sync.mirror_uri("stamped")) == pg_rows(pg_dsn, "stamped")
    mirror.update_incremental()
    assert "changeDataFeed" in (mirror.protocol().writer_features or [])
    feed = pa.table(mirror.load_cdf(starting_version=before + 1)).to_pylist()
    assert sorted((r["id"], r["_change_type"]) for r in feed) == [
        (1, "update_postimage"),  # the default, which Postgres reports for the older row
        (1, "update_preimage"),
        (2, "update_postimage"),
        (2, "update_preimage"),
        (3, "insert"),
    ]
    assert [r["at"] for r in history(sync.history_uri("stamped"))][-2:] == [
        pg_rows(pg_dsn, "stamped")[2]["at"],
        pg_rows(pg_dsn, "stamped")[1]["at"],
    ]
    # The mirror kept its table id: the synced table reads the added columns from its feed.
    assert sync_table(copy, pg_dsn).path == "incremental"

    def without_arrays(rows: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in row.items() if k != "ats"} for row in rows]  # jsonb there

    assert without_arrays(pg_rows(pg_dsn, "stamped_copy")) == without_arrays(
        pg_rows(pg_dsn, "stamped")
    )
    refreshed = sync_lakehouse(sync, pg_dsn, full_refresh=True)
    assert refreshed.path == "snapshot"
    assert delta_rows(sync.mirror_uri("stamped")) == pg_rows(pg_dsn, "stamped")


def test_a_history_without_mirror_needs_full_identity_and_then_keeps_toast(
    pg_dsn: str, tmp_path: Path
) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE h (id int PRIMARY KEY, title text, body text)",
        "INSERT INTO h VALUES (1, 't', repeat(md5('x'), 400))",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.h"], mirror=False)
    with pytest.raises(SpecError, match="REPLICA IDENTITY FULL"):
        sync_lakehouse(sync, pg_dsn)
    execute(pg_dsn, "ALTER TABLE h REPLICA IDENTITY FULL")
    sync_lakehouse(sync, pg_dsn)
    execute(pg_dsn, "UPDATE h SET title = 'changed'")
    sync_lakehouse(sync, pg_dsn)
    post = history(sync.history_uri("h"))[-1]
    assert post["_pg_change_type"] == "update_postimage"
    assert post["body"] == pg_rows(pg_dsn, "h")[0]["body"]
    assert not Path(sync.mirror_uri("h")).exists()


def test_an_unchanged_toast_value_the_batch_lacks_comes_from_the_mirror(
    pg_dsn: str, tmp_path: Path
) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text)",
        # Stored out of line uncompressed: an update that leaves `body` alone sends 'u' for it.
        "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL",
        "INSERT INTO docs SELECT g, 't', (SELECT string_agg(md5(g || '/' || i), '') "
        "FROM generate_series(1, 100) i) FROM generate_series(1, 2) g",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.docs"])
    sync_lakehouse(sync, pg_dsn)
    execute(
        pg_dsn,
        "UPDATE docs SET title = 'kept key' WHERE id = 1",
        "UPDATE docs SET id = 20 WHERE id = 2",  # the value lives under the old key only
    )
    sync_lakehouse(sync, pg_dsn)
    assert delta_rows(sync.mirror_uri("docs")) == pg_rows(pg_dsn, "docs")
    bodies = {r["id"]: r["body"] for r in pg_rows(pg_dsn, "docs")}
    posts = [
        r for r in history(sync.history_uri("docs")) if r["_pg_change_type"] == "update_postimage"
    ]
    assert {r["id"]: r["body"] for r in posts} == bodies


@pytest.mark.parametrize(
    ("key_type", "key_a", "key_b"),
    [
        ("text", "'a,\"b'", "'ü😀'"),
        ("uuid", f"'{'0' * 32}'", f"'{'f' * 32}'"),
        ("bytea", "'\\x00ff'", "'\\x'"),
    ],
)
def test_an_unchanged_toast_value_under_a_key_of_another_type_comes_from_the_mirror(
    pg_dsn: str, tmp_path: Path, key_type: str, key_a: str, key_b: str
) -> None:
    """Looking the mirror up by a text key used to fail in Arrow (string against the dataset's
    string_view), so an update that left a TOASTed value unchanged stopped the sync."""
    execute(
        pg_dsn,
        f"CREATE TABLE docs (id {key_type} PRIMARY KEY, title text, body text)",
        "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL",
        f"INSERT INTO docs VALUES ({key_a}, 't', repeat('x', 5000)), "
        f"({key_b}, 't', repeat('y', 5000))",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.docs"])
    sync_lakehouse(sync, pg_dsn)
    for title in ("kept", "kept again"):  # the second lookup reads a file the MERGE wrote
        execute(pg_dsn, f"UPDATE docs SET title = '{title}' WHERE id = {key_a}")
        result = sync_lakehouse(sync, pg_dsn)
        assert result.failed_tables == {}
    landed = [{**r, "id": str(r["id"])} for r in delta_rows(sync.mirror_uri("docs"))]
    assert landed == [{**r, "id": str(r["id"])} for r in pg_rows(pg_dsn, "docs")]
    posts = [
        r for r in history(sync.history_uri("docs")) if r["_pg_change_type"] == "update_postimage"
    ]
    assert [r["body"] for r in posts] == ["x" * 5000] * 2
    # A synced table reading the mirror looks rows up by key the same way (timeseries tables).
    mirror = open_source(sync.mirror_uri("docs"), storage_options={})
    kept = next(r["id"] for r in pg_rows(pg_dsn, "docs") if r["title"] == "kept again")
    wanted = pa.table({"id": [str(kept) if key_type == "uuid" else kept]}).cast(
        pa.schema([mirror.schema.field("id")])
    )
    found = pa.Table.from_batches(list(read_rows_with_keys(mirror, wanted)), mirror.schema)
    assert found.column("title").to_pylist() == ["kept again"]


def test_older_rows_read_an_added_default_in_the_text_forms_the_stream_uses(
    pg_dsn: str, tmp_path: Path
) -> None:
    """The value older rows read for a column added with a DEFAULT (attmissingval) used to be
    printed under the database's own settings, not the pinned ones of the stream: another
    IntervalStyle, a rounded float, escaped bytea, a local-time offset reached the casts."""
    database = pg_dsn.rsplit("/", 1)[1]  # the fixture gives a URI ending in the database
    execute(
        pg_dsn,
        *(
            f"ALTER DATABASE {database} SET {setting}"
            for setting in (
                "intervalstyle = 'iso_8601'",
                "extra_float_digits = 0",
                "bytea_output = 'escape'",
                "timezone = 'Europe/Amsterdam'",
            )
        ),
        "CREATE TABLE t (id int PRIMARY KEY)",
        "INSERT INTO t VALUES (1)",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.t"])
    sync_lakehouse(sync, pg_dsn)
    execute(
        pg_dsn,
        "ALTER TABLE t ADD COLUMN iv interval DEFAULT '1 day 2 hours', "
        "ADD COLUMN f float8 DEFAULT 0.12345678901234568, ADD COLUMN b bytea DEFAULT '\\x00ff', "
        "ADD COLUMN at timestamptz DEFAULT '1900-01-01 00:00:00+00'",
        "INSERT INTO t VALUES (2)",
    )
    result = sync_lakehouse(sync, pg_dsn)
    assert result.failed_tables == {}
    older, newer = delta_rows(sync.mirror_uri("t"))
    assert newer == {
        "id": 2,
        "iv": "1 day 02:00:00",
        "f": 0.12345678901234568,
        "b": b"\x00\xff",
        "at": datetime(1900, 1, 1, tzinfo=UTC),
    }
    assert older == {**newer, "id": 1}


def test_an_added_default_delta_cannot_hold_fails_its_table_with_column_and_fix(
    pg_dsn: str, tmp_path: Path
) -> None:
    """Older rows read the default of an added column: one Delta cannot hold stops the table
    clearly (it used to escape as a traceback that stopped every table)."""
    execute(
        pg_dsn,
        "CREATE TABLE e (id int PRIMARY KEY)",
        "CREATE TABLE ok (id int PRIMARY KEY)",
        "INSERT INTO e VALUES (1)",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.e", "public.ok"])
    sync_lakehouse(sync, pg_dsn)
    execute(
        pg_dsn,
        "ALTER TABLE e ADD COLUMN day date DEFAULT 'infinity'",
        "INSERT INTO e VALUES (2, '2020-01-01')",
        "INSERT INTO ok VALUES (1)",
    )
    result = sync_lakehouse(sync, pg_dsn)
    message = result.failed_tables["public.e"]
    assert "day" in message and "infinity" in message and "--full-refresh" in message
    assert [r["id"] for r in delta_rows(sync.mirror_uri("e"))] == [1]
    assert [r["id"] for r in delta_rows(sync.mirror_uri("ok"))] == [1]


def test_a_generated_column_stays_out_of_delta_like_out_of_the_stream(
    pg_dsn: str, tmp_path: Path
) -> None:
    """PostgreSQL (before 18) does not publish generated columns: the snapshot used to copy one,
    and every change after it set the mirror's value to NULL, a value Postgres never held."""
    execute(
        pg_dsn,
        "CREATE TABLE g (id int PRIMARY KEY, v int, twice int GENERATED ALWAYS AS (v * 2) STORED)",
        "INSERT INTO g (id, v) VALUES (1, 1), (2, 2)",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.g"])
    sync_lakehouse(sync, pg_dsn)
    execute(pg_dsn, "UPDATE g SET v = 10 WHERE id = 1", "INSERT INTO g (id, v) VALUES (3, 3)")
    sync_lakehouse(sync, pg_dsn)
    expected = [{"id": r["id"], "v": r["v"]} for r in pg_rows(pg_dsn, "g")]
    assert delta_rows(sync.mirror_uri("g")) == expected
    assert {r["_pg_change_type"] for r in history(sync.history_uri("g"))} >= {"insert"}
    assert "twice" not in DeltaTable(sync.history_uri("g")).schema().to_arrow().names


@pytest.mark.parametrize(
    ("column_type", "value", "named"),
    [
        ("date", "0044-03-15 BC", "'0044-03-15 BC'"),
        ("numeric(10,2)[]", "{NaN}", "'NaN'"),  # an array names its element
        ("int[]", "{{1,2},{3,4}}", "'{{1,2},{3,4}}'"),
    ],
)
def test_a_value_delta_cannot_hold_in_the_snapshot_names_table_column_and_value(
    pg_dsn: str, tmp_path: Path, column_type: str, value: str, named: str
) -> None:
    """The snapshot's error used to name the column and the value but not the table."""
    execute(
        pg_dsn,
        f"CREATE TABLE e (id int PRIMARY KEY, bad {column_type})",
        "CREATE TABLE ok (id int PRIMARY KEY)",
        f"INSERT INTO e VALUES (1, '{value}')",
        "INSERT INTO ok VALUES (1)",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.ok", "public.e"])
    with pytest.raises(DataError) as raised:
        sync_lakehouse(sync, pg_dsn)
    message = str(raised.value)
    assert "public.e" in message and "column bad" in message and named in message
    assert "change or remove the value" in message
    execute(pg_dsn, "UPDATE e SET bad = NULL")
    assert sync_lakehouse(sync, pg_dsn).path == "snapshot"
    assert delta_rows(sync.mirror_uri("e")) == [{"id": 1, "bad": None}]


def test_an_unchanged_toasted_array_under_a_composite_key_comes_from_the_mirror(
    pg_dsn: str, tmp_path: Path
) -> None:
    """Filling an unchanged TOAST value from the mirror under a composite key joined the mirror's
    rows in Arrow, which refuses list columns: a TOASTed array stopped the sync."""
    execute(
        pg_dsn,
        "CREATE TABLE docs (a int, b text, title text, tags text[], PRIMARY KEY (a, b))",
        "ALTER TABLE docs ALTER COLUMN tags SET STORAGE EXTERNAL",
        "INSERT INTO docs SELECT g, 'k', 't', array_fill(repeat('x', 100), ARRAY[60]) "
        "FROM generate_series(1, 2) g",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.docs"])
    sync_lakehouse(sync, pg_dsn)
    execute(pg_dsn, "UPDATE docs SET title = 'kept' WHERE a = 1")
    result = sync_lakehouse(sync, pg_dsn)
    assert result.failed_tables == {}
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT a, b, title, tags FROM docs ORDER BY a").fetchall()
    landed = delta_rows(sync.mirror_uri("docs"), key="a")
    assert [(r["a"], r["b"], r["title"], r["tags"]) for r in landed] == rows
    posts = [
        r for r in history(sync.history_uri("docs")) if r["_pg_change_type"] == "update_postimage"
    ]
    assert [r["tags"] for r in posts] == [["x" * 100] * 60]


def test_a_replica_identity_index_other_than_the_key_is_refused_for_a_mirror(
    pg_dsn: str, tmp_path: Path
) -> None:
    """Under REPLICA IDENTITY USING INDEX a delete names its row by the index's columns only: the
    mirror, merged by primary key, used to keep deleted rows and the old key of a moved row."""
    execute(
        pg_dsn,
        "CREATE TABLE t (id int PRIMARY KEY, u int NOT NULL, v text)",
        "CREATE UNIQUE INDEX t_u ON t (u)",
        "CREATE TABLE k (id int PRIMARY KEY, v text)",
        "ALTER TABLE k REPLICA IDENTITY USING INDEX k_pkey",  # the key itself: as DEFAULT
        "INSERT INTO t VALUES (1, 10, 'a'), (2, 20, 'b')",
        "INSERT INTO k VALUES (1, 'a'), (2, 'b')",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.t", "public.k"])
    sync_lakehouse(sync, pg_dsn)
    execute(
        pg_dsn,
        "DELETE FROM k WHERE id = 1",
        "ALTER TABLE t REPLICA IDENTITY USING INDEX t_u",
        "DELETE FROM t WHERE id = 1",
    )
    with pytest.raises(SpecError, match=r"public\.t has REPLICA IDENTITY USING INDEX on \(u\)"):
        sync_lakehouse(sync, pg_dsn)
    assert [r["id"] for r in delta_rows(sync.mirror_uri("t"))] == [1, 2]  # nothing half-landed
    execute(pg_dsn, "ALTER TABLE t REPLICA IDENTITY DEFAULT")
    sync_lakehouse(sync, pg_dsn, full_refresh=True)
    assert delta_rows(sync.mirror_uri("t")) == pg_rows(pg_dsn, "t")
    assert delta_rows(sync.mirror_uri("k")) == pg_rows(pg_dsn, "k")


def test_a_type_changed_between_drains_names_the_table_and_the_exact_command(
    pg_dsn: str, tmp_path: Path
) -> None:
    """A type change a later session meets in Delta's schema used to say `reverse-etl sync NAME`
    and name the Delta location only, not the Postgres table."""
    execute(
        pg_dsn,
        "CREATE TABLE t (id int PRIMARY KEY, n int)",
        "CREATE TABLE ok (id int PRIMARY KEY)",
        "INSERT INTO t VALUES (1, 1)",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.t", "public.ok"])
    sync_lakehouse(sync, pg_dsn)
    execute(
        pg_dsn,
        "ALTER TABLE t ALTER COLUMN n TYPE bigint",
        "INSERT INTO t VALUES (2, 5000000000)",
        "INSERT INTO ok VALUES (1)",
    )
    result = sync_lakehouse(sync, pg_dsn)
    message = result.failed_tables["public.t"]
    assert "public.t" in message and "'n'" in message and "int32" in message, message
    assert "int64" in message and "`reverse-etl sync app --full-refresh`" in message, message
    assert "NAME" not in message
    assert [r["id"] for r in delta_rows(sync.mirror_uri("ok"))] == [1]


def test_a_type_narrowed_within_a_session_goes_on_like_one_met_between_sessions(
    pg_dsn: str, tmp_path: Path
) -> None:
    """bigint to int needs no widening: a later session wrote such values into the bigint column,
    but one that saw the change in its stream stopped the table, saying Delta cannot widen it."""
    execute(
        pg_dsn,
        "CREATE TABLE t (id int PRIMARY KEY, n bigint, d numeric(12,2))",
        "INSERT INTO t VALUES (1, 1, 1.5)",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.t"])
    sync_lakehouse(sync, pg_dsn)
    execute(
        pg_dsn,
        "INSERT INTO t VALUES (2, 2, 2.5)",
        "ALTER TABLE t ALTER COLUMN n TYPE int, ALTER COLUMN d TYPE numeric(10,2)",
        "INSERT INTO t VALUES (3, 3, 3.5)",
        "UPDATE t SET n = -n",
    )
    result = sync_lakehouse(sync, pg_dsn)
    assert result.failed_tables == {}
    assert delta_rows(sync.mirror_uri("t")) == pg_rows(pg_dsn, "t")
    assert sorted(r["n"] for r in history(sync.history_uri("t"))[-3:]) == [-3, -2, -1]
