"""Slot and publication admin, server checks and catalog columns, against a real server."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import sql

from reverse_etl_assets.postgres.replication.messages import Commit, Insert, Relation
from reverse_etl_assets.postgres.replication.problems import ReplicationError, SlotActive
from reverse_etl_assets.postgres.replication.slot import (
    build_create_publication,
    create_publication,
    create_slot,
    drop_publication,
    drop_slot,
    publication_exists,
    published_tables,
    server_problems,
    server_warnings,
    slot_info,
    table_columns,
)
from reverse_etl_assets.postgres.replication.stream import ReplicationStream

SLOT = "reverse_etl_slot_test"


def test_build_create_publication_quotes_names() -> None:
    statement = build_create_publication(
        'Pub"x', tables=[("public", "a"), ("My Schema", "b")], schemas=["s"]
    )
    text = statement.as_string(None)
    assert text == (
        'CREATE PUBLICATION "Pub""x" FOR TABLE "public"."a", "My Schema"."b", TABLES IN SCHEMA "s"'
    )


def test_publication_lifecycle(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE a (id int PRIMARY KEY)")
        conn.execute("CREATE SCHEMA s")
        conn.execute("CREATE TABLE s.b (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE s.c (id int PRIMARY KEY)")
        assert not publication_exists(conn, "p1")
        create_publication(conn, "p1", tables=[("public", "a")], schemas=["s"])
        assert publication_exists(conn, "p1")
        assert published_tables(conn, "p1") == [("public", "a"), ("s", "b"), ("s", "c")]
        # A schema publication picks up tables created later.
        conn.execute("CREATE TABLE s.d (id int)")
        assert ("s", "d") in published_tables(conn, "p1")
        drop_publication(conn, "p1")
        drop_publication(conn, "p1")  # IF EXISTS
        assert not publication_exists(conn, "p1")
        with pytest.raises(ValueError):
            create_publication(conn, "p2")


def test_publication_in_a_non_autocommit_connection_is_committed(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE a (id int)")
        conn.commit()
        create_publication(conn, "p1", tables=[("public", "a")])
    with psycopg.connect(pg_dsn) as conn:
        assert publication_exists(conn, "p1")


def test_exported_snapshot_hides_later_rows_which_arrive_through_the_stream(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")
        create_publication(conn, "p", tables=[("public", "t")])
        with create_slot(pg_dsn, SLOT) as exported:
            assert exported.slot == SLOT and exported.snapshot_name
            conn.execute("INSERT INTO t VALUES (2)")
            with psycopg.connect(pg_dsn) as reader:
                reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                reader.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                        sql.Literal(exported.snapshot_name)
                    )
                )
                ids = [r[0] for r in reader.execute("SELECT id FROM t ORDER BY id")]
                reader.rollback()
            assert ids == [1]
            info = slot_info(conn, SLOT)
            assert info is not None and info.confirmed_flush_lsn == exported.consistent_point
        with ReplicationStream(pg_dsn, slot=SLOT, publication="p") as stream:
            frames = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                frame = stream.read(timeout=0.5)
                if frame is not None:
                    frames.append(frame.message)
                    if isinstance(frame.message, Commit):
                        break
        changes = [m for m in frames if not isinstance(m, Relation)]
        assert isinstance(changes[1], Insert) and changes[1].new == (b"2",)
        assert (
            isinstance(changes[-1], Commit) and changes[-1].commit_lsn >= exported.consistent_point
        )
        drop_slot(conn, SLOT)


def test_create_slot_twice_says_it_exists(pg_dsn: str) -> None:
    with create_slot(pg_dsn, SLOT):
        pass
    with pytest.raises(ReplicationError, match=f"replication slot {SLOT} already exists"):
        create_slot(pg_dsn, SLOT)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        drop_slot(conn, SLOT)


def test_slot_info_and_drop(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert slot_info(conn, SLOT) is None
        drop_slot(conn, SLOT)  # no slot: nothing to do
        conn.execute("CREATE TABLE t (id int)")
        create_publication(conn, "p", tables=[("public", "t")])
        with create_slot(pg_dsn, SLOT):
            pass
        conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")
        info = slot_info(conn, SLOT)
        assert info is not None
        assert info.plugin == "pgoutput" and info.active_pid is None and not info.invalidated
        assert info.wal_status == "reserved"
        assert info.restart_lsn is not None and info.confirmed_flush_lsn is not None
        assert info.retained_wal_bytes == info.current_wal_lsn - info.restart_lsn > 0
        with ReplicationStream(pg_dsn, slot=SLOT, publication="p") as stream:
            stream.read(timeout=0.3)
            active = slot_info(conn, SLOT)
            assert active is not None and active.active_pid is not None
            with pytest.raises(SlotActive, match=f"another follower is streaming from slot {SLOT}"):
                drop_slot(conn, SLOT)
        for _ in range(50):
            info = slot_info(conn, SLOT)
            if info is not None and info.active_pid is None:
                break
            time.sleep(0.1)
        drop_slot(conn, SLOT)
        assert slot_info(conn, SLOT) is None


def test_server_checks_on_a_ready_server(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert server_problems(conn) == []
        limit = conn.execute("SHOW max_slot_wal_keep_size").fetchone()
        warnings = server_warnings(conn)
        assert limit is not None
        if limit[0] == "-1":
            assert any("ALTER SYSTEM SET max_slot_wal_keep_size" in w for w in warnings)
        else:
            assert warnings == []


def test_server_problems_names_the_role_fix(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute('DROP ROLE IF EXISTS "Plain User"')
        conn.execute("CREATE ROLE \"Plain User\" LOGIN PASSWORD 'pw'")
        try:
            conn.execute('SET ROLE "Plain User"')
            problems = server_problems(conn)
            conn.execute("RESET ROLE")
        finally:
            conn.execute('DROP ROLE "Plain User"')
    assert problems == [
        'role Plain User may not use replication: run ALTER ROLE "Plain User" REPLICATION; '
        "as a superuser"
    ]


def test_table_columns_from_the_catalog(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t (b text, a int, gone int, price numeric(10,2), tags text[],"
            " PRIMARY KEY (a, b))"
        )
        conn.execute("ALTER TABLE t DROP COLUMN gone")
        info = table_columns(conn, "public", "t")
        assert info is not None
        assert info.primary_key == ("a", "b") and info.replica_identity == "d"
        assert [(c.name, c.type_oid, c.type_modifier, c.is_key) for c in info.columns] == [
            ("b", 25, -1, True),
            ("a", 23, -1, True),
            ("price", 1700, (10 << 16 | 2) + 4, False),
            ("tags", 1009, -1, False),
        ]
        conn.execute("CREATE UNIQUE INDEX t_price ON t (price)")
        conn.execute("ALTER TABLE t ALTER COLUMN price SET NOT NULL")
        conn.execute("ALTER TABLE t REPLICA IDENTITY USING INDEX t_price")
        info = table_columns(conn, "public", "t")
        assert info is not None and info.replica_identity == "i"
        assert [c.name for c in info.columns if c.is_key] == ["price"]
        assert table_columns(conn, "public", "missing") is None
