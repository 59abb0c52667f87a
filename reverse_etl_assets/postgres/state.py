"""The pipeline's own state in the target database: one row per synced table.

The checkpoint (last Delta version applied) is written in the same transaction as the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from reverse_etl_assets.errors import TransientError
from reverse_etl_assets.postgres import catalog

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
        updated_at timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz,
        follower_pid integer,
        follower_host text,
        snapshot_rows_per_second double precision,
        incremental_changes_per_second double precision
    )
    """
).format(t=sql.Identifier(STATE_SCHEMA, STATE_TABLE))

# Columns added after the first release; older state tables gain them on first use.
_ADDED_COLUMNS = {
    "heartbeat_at": "timestamptz",
    "follower_pid": "integer",
    "follower_host": "text",
    "snapshot_rows_per_second": "double precision",
    "incremental_changes_per_second": "double precision",
}
# How long adding them may wait for the state table's lock (a long reader of the state table
# makes the sync retry later rather than queue every other sync behind it).
ADD_COLUMNS_LOCK_TIMEOUT = "2s"


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
    # The continuous follower's liveness: set while one runs, cleared when it stops cleanly.
    heartbeat_at: datetime | None = None
    follower_pid: int | None = None
    follower_host: str | None = None
    # The rates this table's own syncs reached (moving averages), what the cheaper path is
    # estimated from; None until a large enough sync of that path measured one.
    snapshot_rows_per_second: float | None = None
    incremental_changes_per_second: float | None = None
    # The database's clock when the row was read, to age the heartbeat without clock skew.
    read_at: datetime | None = None


def ensure_state_table(conn: psycopg.Connection) -> None:
    """Create the state schema and table when missing (idempotent, safe under concurrency)."""
    with conn.transaction(), conn.cursor() as cur:
        # Serialize concurrent first runs: CREATE ... IF NOT EXISTS can still race on the catalog.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('reverse_etl.state'))")
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(STATE_SCHEMA)))
        cur.execute(_CREATE)
        present = set(catalog.column_types(conn, STATE_SCHEMA, STATE_TABLE))
        missing = [name for name in _ADDED_COLUMNS if name not in present]
        if missing:
            cur.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(ADD_COLUMNS_LOCK_TIMEOUT))
            )
            cur.execute(add_columns_statement(missing))


def add_columns_statement(names: list[str]) -> sql.Composed:
    """ALTER TABLE ... ADD COLUMN IF NOT EXISTS for state columns an older release lacks."""
    return sql.SQL("ALTER TABLE {t} {adds}").format(
        t=sql.Identifier(STATE_SCHEMA, STATE_TABLE),
        adds=sql.SQL(", ").join(
            sql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(
                sql.Identifier(name), sql.SQL(_ADDED_COLUMNS[name])
            )
            for name in names
        ),
    )


def read_state(conn: psycopg.Connection, name: str) -> TableState | None:
    """The stored state of `name`, or None when it was never synced (or was deleted)."""
    with conn.cursor(row_factory=class_row(TableState)) as cur:
        cur.execute(
            sql.SQL("SELECT *, clock_timestamp() AS read_at FROM {} WHERE name = %s").format(
                sql.Identifier(STATE_SCHEMA, STATE_TABLE)
            ),
            (name,),
        )
        return cur.fetchone()


def read_all_states(conn: psycopg.Connection) -> list[TableState]:
    """Every stored state, by name."""
    with conn.cursor(row_factory=class_row(TableState)) as cur:
        cur.execute(
            sql.SQL("SELECT *, clock_timestamp() AS read_at FROM {} ORDER BY name").format(
                sql.Identifier(STATE_SCHEMA, STATE_TABLE)
            )
        )
        return cur.fetchall()


class Tracked(Protocol):
    """What the state table records of a synced table: its name, source and mode."""

    @property
    def name(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def mode(self) -> str: ...


def save_checkpoint(
    conn: psycopg.Connection,
    table: Tracked,
    *,
    table_id: str,
    version: int,
    rows: int,
    skipped_null_keys: int,
    state: str,
    message: str = "",
    expected_version: int | None = None,
    snapshot_rows_per_second: float | None = None,
    incremental_changes_per_second: float | None = None,
) -> None:
    """Record that `name` now equals its source at `version` (run inside the data transaction).

    With `expected_version`, the checkpoint must still be that version: a sync that lost its
    lock never overwrites what another one applied meanwhile (its transaction rolls back). A
    rate left None keeps the stored one.
    """
    name = table.name
    params: list[object] = [name, table.source, table.mode, table_id, version, rows]
    params.append(skipped_null_keys)
    params += [state, message, snapshot_rows_per_second, incremental_changes_per_second]
    guard = sql.SQL("")
    if expected_version is not None:
        guard = sql.SQL(" WHERE s.last_synced_version = %s")
        params.append(expected_version)
    cur = conn.execute(
        sql.SQL(
            """
            INSERT INTO {t} AS s (name, source, mode, table_id, last_synced_version,
                last_sync_time, rows, skipped_null_keys, state, message, updated_at,
                snapshot_rows_per_second, incremental_changes_per_second)
            VALUES (%s, %s, %s, %s, %s, now(), %s, %s, %s, %s, now(), %s, %s)
            ON CONFLICT (name) DO UPDATE SET source = EXCLUDED.source, mode = EXCLUDED.mode,
                table_id = EXCLUDED.table_id, last_synced_version = EXCLUDED.last_synced_version,
                last_sync_time = EXCLUDED.last_sync_time, rows = EXCLUDED.rows,
                skipped_null_keys = EXCLUDED.skipped_null_keys, state = EXCLUDED.state,
                message = EXCLUDED.message, updated_at = EXCLUDED.updated_at,
                snapshot_rows_per_second =
                    coalesce(EXCLUDED.snapshot_rows_per_second, s.snapshot_rows_per_second),
                incremental_changes_per_second = coalesce(
                    EXCLUDED.incremental_changes_per_second, s.incremental_changes_per_second
                ){guard}
            """
        ).format(t=sql.Identifier(STATE_SCHEMA, STATE_TABLE), guard=guard),
        params,
    )
    if cur.rowcount == 0:
        raise TransientError(
            f"synced table {name!r}: its checkpoint moved away from version {expected_version} "
            "while this sync ran (another sync applied it); nothing was written, and the next "
            "sync starts from the new checkpoint"
        )


def record_state(conn: psycopg.Connection, table: Tracked, *, state: str, message: str) -> None:
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
        (table.name, table.source, table.mode, state, message),
    )


def record_heartbeat(conn: psycopg.Connection, *, name: str, pid: int, host: str) -> bool:
    """Mark the follower of `name` alive now; False when `name` has no state row yet."""
    cur = conn.execute(
        sql.SQL(
            "UPDATE {} SET heartbeat_at = now(), follower_pid = %s, follower_host = %s "
            "WHERE name = %s"
        ).format(sql.Identifier(STATE_SCHEMA, STATE_TABLE)),
        (pid, host, name),
    )
    return cur.rowcount > 0


def clear_heartbeat(conn: psycopg.Connection, *, name: str, pid: int, host: str) -> None:
    """The follower `pid`@`host` of `name` stopped cleanly: no follower runs, none died."""
    conn.execute(
        sql.SQL(
            "UPDATE {} SET heartbeat_at = NULL, follower_pid = NULL, follower_host = NULL "
            "WHERE name = %s AND follower_pid = %s AND follower_host = %s"
        ).format(sql.Identifier(STATE_SCHEMA, STATE_TABLE)),
        (name, pid, host),
    )


def delete_state(conn: psycopg.Connection, name: str) -> bool:
    """Forget `name` (its next sync starts with a fresh snapshot); True if it was known."""
    cur = conn.execute(
        sql.SQL("DELETE FROM {} WHERE name = %s").format(sql.Identifier(STATE_SCHEMA, STATE_TABLE)),
        (name,),
    )
    return cur.rowcount > 0
