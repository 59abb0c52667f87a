"""Lakehouse syncs end to end against a real Postgres (wal_level = logical) and real Delta:
initial snapshot, drains, exactly once, TOAST, truncate, schema changes, a lost slot."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from reverse_etl_assets.pipelines.postgres_to_delta.run import SlotLost, sync_lakehouse
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
