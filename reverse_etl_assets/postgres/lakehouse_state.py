"""What the pipeline remembers of each lakehouse sync, in its own schema: state, message, the last
LSN landed, per-table failures and the follower's heartbeat.

The LSN that counts for exactly-once lives in each Delta commit; this row is for status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from reverse_etl_assets.postgres.state import STATE_SCHEMA

LAKEHOUSE_TABLE = "lakehouse_syncs"

_CREATE = sql.SQL(
    """
    CREATE TABLE IF NOT EXISTS {t} (
        name text PRIMARY KEY,
        mode text NOT NULL,
        state text NOT NULL,
        message text NOT NULL DEFAULT '',
        last_lsn bigint,
        last_commit_time timestamptz,
        last_sync_time timestamptz,
        failed_tables jsonb NOT NULL DEFAULT '{{}}',
        heartbeat_at timestamptz,
        follower_pid integer,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """
).format(t=sql.Identifier(STATE_SCHEMA, LAKEHOUSE_TABLE))

# Added after the first release: rows written before it hold NULL until the next snapshot.
_ADD_ACKED = sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS acked_lsn bigint").format(
    t=sql.Identifier(STATE_SCHEMA, LAKEHOUSE_TABLE)
)


@dataclass(frozen=True, kw_only=True)
class LakehouseState:
    """One lakehouse sync's row."""

    name: str
    mode: str
    state: str
    message: str
    last_lsn: int | None
    last_commit_time: datetime | None
    last_sync_time: datetime | None
    failed_tables: dict[str, str] = field(default_factory=dict)
    heartbeat_at: datetime | None = None
    follower_pid: int | None = None
    updated_at: datetime | None = None
    read_at: datetime | None = None


def ensure_lakehouse_table(conn: psycopg.Connection) -> None:
    """Create the state schema and table when missing."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('reverse_etl.state'))")
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(STATE_SCHEMA)))
        conn.execute(_CREATE)
        conn.execute(_ADD_ACKED)


def read_lakehouse_state(conn: psycopg.Connection, name: str) -> LakehouseState | None:
    """The row of lakehouse sync `name`, None when it never ran (or the table is missing)."""
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"{STATE_SCHEMA}.{LAKEHOUSE_TABLE}",)
    ).fetchone()
    if not exists or not exists[0]:
        return None
    with conn.cursor(row_factory=class_row(LakehouseState)) as cur:
        cur.execute(
            sql.SQL(
                "SELECT name, mode, state, message, last_lsn, last_commit_time, last_sync_time, "
                "failed_tables, heartbeat_at, follower_pid, updated_at, now() AS read_at "
                "FROM {} WHERE name = %s"
            ).format(sql.Identifier(STATE_SCHEMA, LAKEHOUSE_TABLE)),
            (name,),
        )
        return cur.fetchone()


def record_lakehouse_state(
    conn: psycopg.Connection,
    *,
    name: str,
    mode: str,
    state: str,
    message: str = "",
    last_lsn: int | None = None,
    last_commit_time: datetime | None = None,
    failed_tables: dict[str, str] | None = None,
) -> None:
    """Upsert the row; LSN, commit time and failures are kept when not given."""
    updates: dict[str, Any] = {"mode": mode, "state": state, "message": message}
    if last_lsn is not None:
        updates["last_lsn"] = last_lsn
        updates["last_sync_time"] = sql.SQL("now()")
    if last_commit_time is not None:
        updates["last_commit_time"] = last_commit_time
    if failed_tables is not None:
        updates["failed_tables"] = Jsonb(failed_tables)
    columns = list(updates)
    values = [v if isinstance(v, sql.Composable) else sql.Literal(v) for v in updates.values()]
    conn.execute(
        sql.SQL(
            "INSERT INTO {t} AS s (name, {cols}, updated_at) VALUES (%s, {vals}, now()) "
            "ON CONFLICT (name) DO UPDATE SET {sets}, updated_at = now()"
        ).format(
            t=sql.Identifier(STATE_SCHEMA, LAKEHOUSE_TABLE),
            cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
            vals=sql.SQL(", ").join(values),
            sets=sql.SQL(", ").join(
                sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in columns
            ),
        ),
        (name,),
    )


def record_lakehouse_ack(conn: psycopg.Connection, *, name: str, lsn: int) -> None:
    """Remember that the slot of `name` is (about to be) acknowledged up to `lsn`: written before
    the acknowledgement, so the slot is never legitimately past it."""
    conn.execute(
        sql.SQL("UPDATE {} SET acked_lsn = %s WHERE name = %s").format(
            sql.Identifier(STATE_SCHEMA, LAKEHOUSE_TABLE)
        ),
        (lsn, name),
    )


def read_lakehouse_ack(conn: psycopg.Connection, name: str) -> int | None:
    """The LSN up to which the slot of `name` may have been acknowledged; None when unknown."""
    row = conn.execute(
        sql.SQL("SELECT acked_lsn FROM {} WHERE name = %s").format(
            sql.Identifier(STATE_SCHEMA, LAKEHOUSE_TABLE)
        ),
        (name,),
    ).fetchone()
    return None if row is None else row[0]


def record_lakehouse_heartbeat(conn: psycopg.Connection, *, name: str, pid: int | None) -> None:
    """Mark the follower alive now (pid None: it stopped cleanly)."""
    beat = sql.SQL("now()") if pid is not None else sql.SQL("NULL")
    conn.execute(
        sql.SQL("UPDATE {} SET heartbeat_at = {}, follower_pid = %s WHERE name = %s").format(
            sql.Identifier(STATE_SCHEMA, LAKEHOUSE_TABLE), beat
        ),
        (pid, name),
    )


def delete_lakehouse_state(conn: psycopg.Connection, name: str) -> bool:
    """Forget lakehouse sync `name`; True when it had a row."""
    if read_lakehouse_state(conn, name) is None:
        return False
    cur = conn.execute(
        sql.SQL("DELETE FROM {} WHERE name = %s").format(
            sql.Identifier(STATE_SCHEMA, LAKEHOUSE_TABLE)
        ),
        (name,),
    )
    return cur.rowcount > 0
