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
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from reverse_etl_assets.delta import writer
from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.pipelines.postgres_to_delta.follow import _Follower
from reverse_etl_assets.pipelines.postgres_to_delta.run import SlotLost, sync_lakehouse
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


CRASH = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from reverse_etl_assets.delta import writer
    from reverse_etl_assets.pipelines.postgres_to_delta.stream import ChangeStream
    from reverse_etl_assets.pipelines.postgres_to_delta.run import SlotLost, sync_lakehouse
    from reverse_etl_assets_tests.lakehouse_helpers import lakehouse_sync

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if sys.argv[1] == "before-mirror":  # the history has committed, the mirror not yet
        writer.merge_changes = die
    else:  # both have committed; the slot is not acknowledged
        ChangeStream.acknowledge = die
    sync_lakehouse(lakehouse_sync(Path(sys.argv[3]), tables=["public.docs"]), sys.argv[2])
    """
)
BIG = "(SELECT string_agg(md5(i::text || {}), '') FROM generate_series(1, 100) i)"


@pytest.mark.parametrize("point", ["before-mirror", "before-acknowledgement"])
def test_kill_9_after_a_delta_commit_lands_each_change_exactly_once(
    pg_dsn: str, tmp_path: Path, point: str
) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text)",
        "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL",
        f"INSERT INTO docs SELECT g, 't', {BIG.format('g')} FROM generate_series(1, 3) g",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.docs"])
    sync_lakehouse(sync, pg_dsn)
    execute(
        pg_dsn,
        f"INSERT INTO docs VALUES (4, 'new', {BIG.format('4')})",
        "UPDATE docs SET title = 'body unchanged' WHERE id = 1",
        "UPDATE docs SET id = 10 WHERE id = 2",
        "DELETE FROM docs WHERE id = 3",
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH, point, pg_dsn, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    execute(pg_dsn, "UPDATE docs SET title = 'after the crash' WHERE id = 10")
    again = sync_lakehouse(sync, pg_dsn)
    assert again.changes == {"update_postimage": 1}  # only what came after the crash
    assert delta_rows(sync.mirror_uri("docs")) == rows_of(pg_dsn, "docs")
    rows = history(sync.history_uri("docs"))[3:]
    assert [(r["id"], r["_pg_change_type"]) for r in rows] == [
        (4, "insert"),
        (1, "update_postimage"),
        (2, "update_preimage"),
        (10, "update_postimage"),
        (3, "delete"),
        (10, "update_postimage"),
    ]
    bodies = {r["id"]: r["body"] for r in rows_of(pg_dsn, "docs")}
    images = [r for r in rows if r["_pg_change_type"] in ("insert", "update_postimage")]
    assert [(r["id"], r["body"] == bodies[r["id"]]) for r in images] == [
        (r["id"], True) for r in images
    ]  # every image whole: never a NULL placeholder


@pytest.mark.parametrize("how", ["re-created", "advanced"])
def test_a_slot_replaced_or_moved_behind_the_syncs_back_is_a_failure_not_a_gap(
    pg_dsn: str, tmp_path: Path, how: str
) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE orders (id int PRIMARY KEY, v text)",
        "INSERT INTO orders VALUES (1, 'a')",
    )
    sync = lakehouse_sync(tmp_path)
    sync_lakehouse(sync, pg_dsn)
    execute(pg_dsn, "INSERT INTO orders VALUES (2, 'only the old slot had it')")
    if how == "re-created":
        execute(
            pg_dsn,
            "SELECT pg_drop_replication_slot('reverse_etl_app')",
            "SELECT pg_create_logical_replication_slot('reverse_etl_app', 'pgoutput')",
        )
    else:
        execute(
            pg_dsn, "SELECT pg_replication_slot_advance('reverse_etl_app', pg_current_wal_lsn())"
        )
    execute(pg_dsn, "INSERT INTO orders VALUES (3, 'after')")
    with pytest.raises(SlotLost, match="--full-refresh"):
        sync_lakehouse(sync, pg_dsn)
    assert [r["id"] for r in delta_rows(sync.mirror_uri("orders"))] == [1]  # no gap landed
    sync_lakehouse(sync, pg_dsn, full_refresh=True)
    execute(pg_dsn, "INSERT INTO orders VALUES (4, 'streamed')")
    sync_lakehouse(sync, pg_dsn)  # the new slot is trusted again
    assert delta_rows(sync.mirror_uri("orders")) == rows_of(pg_dsn, "orders")


class _Killed(Exception):
    """The process dying at a chosen point."""


@pytest.mark.parametrize("crash", [False, True], ids=["", "crash between the column and rows"])
def test_rows_older_than_an_added_column_hold_its_default_in_the_mirror(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: bool
) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE orders (id int PRIMARY KEY, v text)",
        "INSERT INTO orders SELECT g, 'v' FROM generate_series(1, 4) g",
    )
    sync = lakehouse_sync(tmp_path)
    sync_lakehouse(sync, pg_dsn)
    execute(
        pg_dsn,
        "UPDATE orders SET v = 'before the column' WHERE id = 1",
        "ALTER TABLE orders ADD COLUMN tag text NOT NULL DEFAULT 'd'",
        "UPDATE orders SET v = 'after the column' WHERE id = 2",
        "INSERT INTO orders VALUES (5, 'new', 'own')",
    )
    if crash:  # the mirror's column is committed, the MERGE that fills older rows never runs
        with monkeypatch.context() as patched:

            def killed(*args: object, **kwargs: object) -> None:
                raise _Killed

            patched.setattr(writer, "_merge", killed)
            with pytest.raises(_Killed):
                sync_lakehouse(sync, pg_dsn)
        assert "tag" in DeltaTable(sync.mirror_uri("orders")).schema().to_arrow().names
    sync_lakehouse(sync, pg_dsn)
    # Postgres reports the default for every row that existed when the column was added.
    assert delta_rows(sync.mirror_uri("orders")) == rows_of(pg_dsn, "orders")


def test_defaults_of_every_scalar_type_reach_older_rows_without_reading_the_mirror(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Constant defaults are set by the MERGE on the rows it does not match, as SQL literals:
    the mirror's keys are never read into memory for them (only an array's default is)."""
    execute(
        pg_dsn,
        "CREATE TABLE wide (id int PRIMARY KEY, v text)",
        "INSERT INTO wide SELECT g, 'v' FROM generate_series(1, 3) g",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.wide"])
    sync_lakehouse(sync, pg_dsn)
    execute(
        pg_dsn,
        "ALTER TABLE wide ADD COLUMN b bool DEFAULT true, ADD COLUMN s smallint DEFAULT -32768, "
        "ADD COLUMN l bigint DEFAULT 9223372036854775807, ADD COLUMN n numeric(12,3) "
        "DEFAULT -123456789.5, ADD COLUMN r real DEFAULT 0.1, ADD COLUMN d double precision "
        "DEFAULT '-Infinity', ADD COLUMN t text DEFAULT E'it''s\\n\"q\"', ADD COLUMN e text "
        "DEFAULT '', ADD COLUMN by bytea DEFAULT '\\x00ff', ADD COLUMN dt date DEFAULT "
        "'0001-01-01', ADD COLUMN ts timestamp DEFAULT '0001-01-01 00:00:00.000001', "
        "ADD COLUMN tz timestamptz DEFAULT '9999-12-31 23:59:59.999999+00', ADD COLUMN u uuid "
        "DEFAULT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        "UPDATE wide SET v = 'touched' WHERE id = 2",
    )

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the mirror's keys were read")

    with monkeypatch.context() as patched:
        patched.setattr(writer, "read_keys", never)
        sync_lakehouse(sync, pg_dsn)
    # uuid lands as its text; psycopg reads real as the double of its text, Delta as the float.
    as_delta = {"u": str, "r": lambda v: pa.scalar(v, pa.float32()).as_py()}
    expected = [
        {k: as_delta[k](v) if k in as_delta else v for k, v in r.items()}
        for r in rows_of(pg_dsn, "wide")
    ]
    assert delta_rows(sync.mirror_uri("wide")) == expected
    execute(
        pg_dsn,
        "ALTER TABLE wide ADD COLUMN a int[] DEFAULT '{1,NULL}'",
        "DELETE FROM wide WHERE id = 3",
    )
    sync_lakehouse(sync, pg_dsn)
    assert [(r["id"], r["a"]) for r in delta_rows(sync.mirror_uri("wide"))] == [
        (1, [1, None]),
        (2, [1, None]),
    ]


def test_an_ordinary_role_syncs_once_granted_and_no_error_shows_its_password(
    pg_dsn: str, tmp_path: Path
) -> None:
    database = pg_dsn.rsplit("/", 1)[1]
    role, secret = f"lake_{database[-8:]}", "Pw-s3cret-7q"
    execute(
        pg_dsn,
        f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{secret}'",
        "CREATE TABLE orders (id int PRIMARY KEY, v text)",
        "INSERT INTO orders VALUES (1, 'a')",
    )
    user_dsn = pg_dsn.replace("://postgres@", f"://{role}:{secret}@")
    assert user_dsn != pg_dsn
    sync = lakehouse_sync(tmp_path)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            sync_lakehouse(sync, user_dsn)  # may not create the state schema nor publish
        assert secret not in str(refused.value)
        execute(
            pg_dsn,
            f"GRANT CREATE ON DATABASE {database} TO {role}",
            "INSERT INTO orders VALUES (9, 'x')",
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="owner of table orders"):
            sync_lakehouse(sync, user_dsn)
        execute(pg_dsn, f"ALTER TABLE orders OWNER TO {role}")
        sync_lakehouse(sync, user_dsn)
        execute(pg_dsn, "INSERT INTO orders VALUES (2, 'b')", "UPDATE orders SET v = 'c'")
        sync_lakehouse(sync, user_dsn)
        assert delta_rows(sync.mirror_uri("orders")) == rows_of(pg_dsn, "orders")
        execute(pg_dsn, "SELECT pg_drop_replication_slot('reverse_etl_app')")
        with pytest.raises(SlotLost) as lost:
            sync_lakehouse(sync, user_dsn)
        assert secret not in str(lost.value)
        with psycopg.connect(pg_dsn) as conn:
            messages = conn.execute("SELECT message FROM reverse_etl.lakehouse_syncs").fetchall()
        assert messages and all(secret not in m for (m,) in messages)
    finally:
        execute(
            pg_dsn,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            f"WHERE slot_name = 'reverse_etl_app' AND database = '{database}'",
            f"REASSIGN OWNED BY {role} TO postgres",
            f"DROP OWNED BY {role}",
            f"DROP ROLE {role}",
        )


def test_a_follower_reconnecting_to_a_slot_re_created_meanwhile_stops(
    pg_dsn: str, tmp_path: Path
) -> None:
    """Between two sessions of a follower (Postgres restarted, a network blip), the slot was
    dropped and re-created: the follower stops on it instead of streaming past the gap."""
    execute(
        pg_dsn,
        "CREATE TABLE orders (id int PRIMARY KEY, v text)",
        "INSERT INTO orders VALUES (1, 'a')",
    )
    sync = lakehouse_sync(tmp_path, mode="continuous")
    follower = _Follower(sync, pg_dsn, on_flush=None)
    try:
        follower.has_more()  # the snapshot, then a streaming session
        follower.recover()  # the session is lost, as on a transient error
        execute(
            pg_dsn,
            "INSERT INTO orders VALUES (2, 'only the old slot had it')",
            "SELECT pg_drop_replication_slot('reverse_etl_app')",
            "SELECT pg_create_logical_replication_slot('reverse_etl_app', 'pgoutput')",
        )
        with pytest.raises(SlotLost, match=r"re-created or advanced.*--full-refresh"):
            follower.has_more()  # reconnecting
    finally:
        follower.close()
