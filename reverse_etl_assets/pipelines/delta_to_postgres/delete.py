"""Stop syncing a table: forget its state, and keep (unprotected) or drop the Postgres table.

Declared again later, the table starts over with a fresh initial snapshot.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from reverse_etl_assets.errors import TransientError
from reverse_etl_assets.postgres import ddl, state
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.locks import try_lock_table, unlock_table
from reverse_etl_assets.postgres.protection import GUARD_TRIGGER


def delete_synced_table(name: str, dsn: str, *, drop_table: bool) -> str:
    """Remove the state of synced table `name` (catalog.schema.table); say what was done."""
    _, schema, table = name.split(".")
    target = ddl.qualified(schema, table)
    with connect(dsn, autocommit=True) as conn:
        state.ensure_state_table(conn)
        if not try_lock_table(conn, name):
            raise TransientError(
                f"{name}: a sync or a follower of this table is running; stop it and retry"
            )
        try:
            with conn.transaction():
                known, has_table = _delete(conn, name, target, drop_table=drop_table)
        finally:
            unlock_table(conn, name)
    if not known and not has_table:
        return f"{name}: nothing to delete (no state, no table {schema}.{table})"
    what = "state removed" if known else "no state was stored"
    if has_table:
        what += (
            f"; table {schema}.{table} dropped"
            if drop_table
            else f"; table {schema}.{table} kept as an ordinary table"
        )
    return f"{name}: {what}"


def _delete(
    conn: psycopg.Connection, name: str, target: sql.Composed, *, drop_table: bool
) -> tuple[bool, bool]:
    known = state.delete_state(conn, name)
    exists = conn.execute("SELECT to_regclass(%s)", (target.as_string(conn),)).fetchone()
    has_table = bool(exists and exists[0])
    if has_table and drop_table:
        conn.execute(sql.SQL("DROP TABLE {}").format(target))
    elif has_table:
        # No longer synced: it becomes an ordinary table its owner may write.
        conn.execute(
            sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(GUARD_TRIGGER), target)
        )
    return known, has_table
