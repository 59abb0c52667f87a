"""One sync per synced table at a time, across processes: a Postgres advisory lock.

A second sync of the same table waits for the first and then re-reads the checkpoint; a follower,
which holds the lock for its whole life, refuses to start instead of waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

log = logging.getLogger(__name__)


def lock_key(name: str) -> str:
    """The text hashed into the advisory lock key of synced table `name`."""
    return f"reverse_etl:{name}"


@contextmanager
def table_lock(conn: psycopg.Connection, name: str) -> Iterator[None]:
    """Hold the session advisory lock of synced table `name` (the connection is autocommit)."""
    if not try_lock_table(conn, name):
        log.info("synced table %s: another sync is running; waiting for it to finish", name)
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock_key(name),))
    try:
        yield
    finally:
        if not conn.closed:
            unlock_table(conn, name)


def try_lock_table(conn: psycopg.Connection, name: str) -> bool:
    """Take the lock of `name` if it is free; False when another session holds it."""
    got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (lock_key(name),)).fetchone()
    return bool(got and got[0])


def unlock_table(conn: psycopg.Connection, name: str) -> None:
    """Release the lock of `name` taken on this connection."""
    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock_key(name),))


def lock_holders(conn: psycopg.Connection, name: str) -> list[tuple[int, str]]:
    """The sessions holding the lock of `name`: (pid, application_name)."""
    # A one-bigint advisory lock shows in pg_locks split in halves: classid high, objid low.
    rows = conn.execute(
        "SELECT l.pid, coalesce(a.application_name, '') FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        "AND l.classid = ((hashtext(%(key)s)::bigint >> 32) & 4294967295)::oid "
        "AND l.objid = (hashtext(%(key)s)::bigint & 4294967295)::oid "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        {"key": lock_key(name)},
    ).fetchall()
    return [(int(pid), str(app)) for pid, app in rows]
