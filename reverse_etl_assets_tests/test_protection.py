"""Synced tables are read-only for everyone but the pipeline: privileges plus a guard trigger
enabled ALWAYS, tried with each kind of writer, and kept across full refreshes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets_tests.helpers import fetch, one_table, write_delta

WRITES = [
    "INSERT INTO gold.items_synced VALUES (99, 'x')",
    "UPDATE gold.items_synced SET v = 'x'",
    "DELETE FROM gold.items_synced",
    "TRUNCATE gold.items_synced",
]


def as_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.split("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@pytest.fixture
def synced(tmp_path: Path, pg_dsn: str) -> Iterator[Path]:
    src = tmp_path / "src"
    write_delta(src, pa.table({"id": pa.array([1, 2], pa.int64()), "v": ["a", "b"]}))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE ROLE app_reader LOGIN")
        conn.execute("CREATE ROLE app_writer LOGIN")
        conn.execute("CREATE ROLE other_admin LOGIN SUPERUSER")
    table = one_table(
        tmp_path, source=str(src), primary_key=["id"], mode="triggered", readers=["app_reader"]
    )
    sync_table(table, pg_dsn)
    try:
        yield src
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DROP OWNED BY app_reader, app_writer, other_admin")
            conn.execute("DROP ROLE app_reader, app_writer, other_admin")


def refused(dsn: str, statement: str, *, replica: bool = False) -> str:
    with psycopg.connect(dsn) as conn:
        if replica:
            conn.execute("SET session_replication_role = replica")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(statement)
    return str(info.value) + str(info.value.diag.message_hint or "")


def test_reader_can_select_but_not_write(synced: Path, pg_dsn: str) -> None:
    reader = as_user(pg_dsn, "app_reader")
    assert fetch(reader, "SELECT count(*) FROM gold.items_synced") == [(2,)]
    for statement in WRITES:
        assert "permission denied" in refused(reader, statement)


def test_write_grants_given_by_hand_do_not_survive_a_refresh(
    synced: Path, tmp_path: Path, pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("GRANT ALL ON gold.items_synced TO app_writer")
        conn.execute("GRANT USAGE ON SCHEMA gold TO app_writer")
    table = one_table(tmp_path, source=str(synced), primary_key=["id"], readers=["app_reader"])
    sync_table(table, pg_dsn, full_refresh=True)
    writer = as_user(pg_dsn, "app_writer")
    assert fetch(writer, "SELECT count(*) FROM gold.items_synced") == [(2,)]  # SELECT kept
    for statement in WRITES:
        assert "permission denied" in refused(writer, statement)


@pytest.mark.parametrize("replica", [False, True])
def test_another_superuser_is_refused_even_as_replica(
    synced: Path, pg_dsn: str, replica: bool
) -> None:
    admin = as_user(pg_dsn, "other_admin")
    for statement in WRITES:
        message = refused(admin, statement, replica=replica)
        assert "gold.items_synced is a synced table" in message
        assert "create a separate table keyed by the same primary key" in message
    assert fetch(pg_dsn, "SELECT count(*) FROM gold.items_synced") == [(2,)]


def test_pipeline_role_outside_a_pipeline_transaction_is_refused(synced: Path, pg_dsn: str) -> None:
    assert "is a synced table" in refused(pg_dsn, "DELETE FROM gold.items_synced")


def test_pipeline_still_writes_and_protection_survives_refreshes(
    synced: Path, tmp_path: Path, pg_dsn: str
) -> None:
    DeltaTable(str(synced)).update(updates={"v": "'z'"}, predicate="id = 1")
    table = one_table(
        tmp_path,
        source=str(synced),
        primary_key=["id"],
        mode="triggered",
        readers=["app_reader"],
        full_refresh_threshold=1.0,
    )
    assert sync_table(table, pg_dsn).path == "incremental"
    assert fetch(pg_dsn, "SELECT v FROM gold.items_synced WHERE id = 1") == [("z",)]
    sync_table(table, pg_dsn, full_refresh=True)
    trigger = fetch(
        pg_dsn,
        "SELECT tgenabled FROM pg_trigger WHERE tgrelid = 'gold.items_synced'::regclass "
        "AND tgname = 'reverse_etl_read_only'",
    )
    assert trigger == [("A",)]
    assert "is a synced table" in refused(as_user(pg_dsn, "other_admin"), WRITES[0], replica=True)
