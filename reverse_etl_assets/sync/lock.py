"""One sync per synced table at a time, across processes: a Postgres advisory lock.

A second sync of the same table waits for the first and then re-reads the checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

log = logging.getLogger(__name__)


@contextmanager
def table_lock(conn: psycopg.Connection, name: str) -> Iterator[None]:
    """Hold the session advisory lock of synced table `name` (the connection is autocommit)."""
    key = f"reverse_etl:{name}"
    got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
    if not (got and got[0]):
        log.info("synced table %s: another sync is running; waiting for it to finish", name)
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
