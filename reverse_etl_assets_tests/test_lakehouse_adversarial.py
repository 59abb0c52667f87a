"""Lakehouse syncs under hostile conditions: tables that cannot be published safely, a process
killed between its Delta commits and its acknowledgement, a slot replaced behind its back, an
ordinary role, schema changes amid unchanged TOAST values, and passwords kept out of output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.pipelines.postgres_to_delta.run import sync_lakehouse
from reverse_etl_assets_tests.lakehouse_helpers import (
    delta_rows,
    execute,
    history,
    lakehouse_sync,
)


def rows_of(dsn: str, table: str) -> list[dict[str, object]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(f"SELECT * FROM {table} ORDER BY id")  # type: ignore[arg-type]
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def test_a_table_without_replica_identity_stops_the_sync_before_it_breaks_app_writes(
    pg_dsn: str, tmp_path: Path
) -> None:
    execute(
        pg_dsn,
        "CREATE SCHEMA app",
        "CREATE TABLE app.orders (id int PRIMARY KEY, v text)",
        "CREATE TABLE app.loose (id int, v text)",
        "INSERT INTO app.loose VALUES (1, 'a')",
    )
    sync = lakehouse_sync(tmp_path, tables=[], schemas=["app"])
    with pytest.raises(SpecError, match=r"app\.loose .*REPLICA IDENTITY FULL"):
        sync_lakehouse(sync, pg_dsn)
    # Nothing was published: the application can still update and delete.
    execute(pg_dsn, "UPDATE app.loose SET v = 'b'", "DELETE FROM app.loose WHERE id = 2")

    execute(pg_dsn, "ALTER TABLE app.loose REPLICA IDENTITY FULL")
    sync_lakehouse(sync, pg_dsn)
    execute(
        pg_dsn,
        "INSERT INTO app.loose VALUES (2, 'x')",
        "UPDATE app.loose SET v = 'c' WHERE id = 1",
        "DELETE FROM app.loose WHERE id = 2",
    )
    sync_lakehouse(sync, pg_dsn)
    kinds = [(r["id"], r["_pg_change_type"]) for r in history(sync.history_uri("loose"))]
    assert kinds == [
        (1, "insert"),
        (2, "insert"),
        (1, "update_preimage"),
        (1, "update_postimage"),
        (2, "delete"),
    ]
    assert not Path(sync.mirror_uri("loose")).exists()  # history only


def test_replica_identity_nothing_stops_a_named_table_too(pg_dsn: str, tmp_path: Path) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE orders (id int PRIMARY KEY, v text)",
        "ALTER TABLE orders REPLICA IDENTITY NOTHING",
    )
    with pytest.raises(SpecError, match="REPLICA IDENTITY NOTHING"):
        sync_lakehouse(lakehouse_sync(tmp_path), pg_dsn)
    execute(pg_dsn, "INSERT INTO orders VALUES (1, 'a')", "UPDATE orders SET v = 'b'")
