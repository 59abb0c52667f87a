"""Shared fixtures: one real throwaway PostgreSQL server per session, a fresh database per test.

REVERSE_ETL_TEST_PG_DSN points the suite at an existing server instead of starting one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from reverse_etl_assets.dev import embedded_postgres


@pytest.fixture(scope="session")
def pg_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of a superuser on the suite's PostgreSQL server (database `postgres`)."""
    external = os.environ.get("REVERSE_ETL_TEST_PG_DSN")
    if external:
        yield external
        return
    data_dir = tmp_path_factory.mktemp("postgres")
    dsn = embedded_postgres.ensure_running(data_dir)
    try:
        yield dsn
    finally:
        embedded_postgres.stop(data_dir)


@pytest.fixture
def pg_dsn(pg_server_dsn: str) -> Iterator[str]:
    """DSN of a fresh, empty database of its own for one test, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield _with_database(pg_server_dsn, name)
    finally:
        with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def lake_root(tmp_path: Path) -> Path:
    """Root of a Delta lake for one test (`<root>/<catalog>/<schema>/<table>`), not yet created."""
    return tmp_path / "lake"


def _with_database(dsn: str, name: str) -> str:
    """The same DSN pointing at database `name`, kept a URI when it was one."""
    parts = urlsplit(dsn)
    if parts.scheme in ("postgres", "postgresql"):
        return urlunsplit(parts._replace(path=f"/{name}"))
    return make_conninfo(dsn, dbname=name)
