"""The pipeline's own state in the target database: one row per synced table.

The checkpoint (last Delta version applied) is written in the same transaction as the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.rows import class_row

STATE_SCHEMA = "reverse_etl"
STATE_TABLE = "synced_tables"

_CREATE = sql.SQL(
    """
    CREATE TABLE IF NOT EXISTS {t} (
        name text PRIMARY KEY,
        source text NOT NULL,
        mode text NOT NULL,
        table_id text,
        last_synced_version bigint,
        last_sync_time timestamptz,
        rows bigint,
        skipped_null_keys bigint NOT NULL DEFAULT 0,
        state text NOT NULL,
        message text NOT NULL DEFAULT '',
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """
).format(t=sql.Identifier(STATE_SCHEMA, STATE_TABLE))


@dataclass(frozen=True, kw_only=True)
class TableState:
    """What the pipeline remembers of one synced table."""

    name: str
    source: str
    mode: str
    table_id: str | None
    last_synced_version: int | None
    last_sync_time: datetime | None
    rows: int | None
    skipped_null_keys: int
    state: str
    message: str
    updated_at: datetime


def ensure_state_table(conn: psycopg.Connection) -> None:
    """Create the state schema and table when missing (idempotent, safe under concurrency)."""
    with conn.transaction(), conn.cursor() as cur:
        # Serialize concurrent first runs: CREATE ... IF NOT EXISTS can still race on the catalog.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('reverse_etl.state'))")
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(STATE_SCHEMA)))
        cur.execute(_CREATE)


def read_state(conn: psycopg.Connection, name: str) -> TableState | None:
    """The stored state of `name`, or None when it was never synced (or was deleted)."""
    with conn.cursor(row_factory=class_row(TableState)) as cur:
        cur.execute(
            sql.SQL("SELECT * FROM {} WHERE name = %s").format(
                sql.Identifier(STATE_SCHEMA, STATE_TABLE)
            ),
            (name,),
        )
        return cur.fetchone()


def read_all_states(conn: psycopg.Connection) -> list[TableState]:
    """Every stored state, by name."""
    with conn.cursor(row_factory=class_row(TableState)) as cur:
        cur.execute(
            sql.SQL("SELECT * FROM {} ORDER BY name").format(
                sql.Identifier(STATE_SCHEMA, STATE_TABLE)
            )
        )
        return cur.fetchall()


def save_checkpoint(
    conn: psycopg.Connection,
    *,
    name: str,
    source: str,
    mode: str,
    table_id: str,
    version: int,
    rows: int,
    skipped_null_keys: int,
    state: str,
    message: str = "",
) -> None:
    """Record that `name` now equals its source at `version` (run inside the data transaction)."""
    conn.execute(
        sql.SQL(
            """
            INSERT INTO {t} AS s (name, source, mode, table_id, last_synced_version,
                last_sync_time, rows, skipped_null_keys, state, message, updated_at)
            VALUES (%s, %s, %s, %s, %s, now(), %s, %s, %s, %s, now())
            ON CONFLICT (name) DO UPDATE SET source = EXCLUDED.source, mode = EXCLUDED.mode,
                table_id = EXCLUDED.table_id, last_synced_version = EXCLUDED.last_synced_version,
                last_sync_time = EXCLUDED.last_sync_time, rows = EXCLUDED.rows,
                skipped_null_keys = EXCLUDED.skipped_null_keys, state = EXCLUDED.state,
                message = EXCLUDED.message, updated_at = EXCLUDED.updated_at
            """
        ).format(t=sql.Identifier(STATE_SCHEMA, STATE_TABLE)),
        (name, source, mode, table_id, version, rows, skipped_null_keys, state, message),
    )


def record_state(
    conn: psycopg.Connection, *, name: str, source: str, mode: str, state: str, message: str
) -> None:
    """Set the detailed state and message of `name` without touching its checkpoint."""
    conn.execute(
        sql.SQL(
            """
            INSERT INTO {t} AS s (name, source, mode, state, message, updated_at)
            VALUES (%s, %s, %s, %s, %s, now())
            ON CONFLICT (name) DO UPDATE SET source = EXCLUDED.source, mode = EXCLUDED.mode,
                state = EXCLUDED.state, message = EXCLUDED.message, updated_at = now()
            """
        ).format(t=sql.Identifier(STATE_SCHEMA, STATE_TABLE)),
        (name, source, mode, state, message),
    )


def delete_state(conn: psycopg.Connection, name: str) -> bool:
    """Forget `name` (its next sync starts with a fresh snapshot); True if it was known."""
    cur = conn.execute(
        sql.SQL("DELETE FROM {} WHERE name = %s").format(sql.Identifier(STATE_SCHEMA, STATE_TABLE)),
        (name,),
    )
    return cur.rowcount > 0
