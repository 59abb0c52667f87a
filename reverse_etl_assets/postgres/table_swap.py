"""Swap a freshly loaded table in for the live one in one short transaction.

Grants, dependent views and the canonical index names move to the new table; readers see the
old table or the new one, never an empty or partial one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import errors, sql

from reverse_etl_assets.errors import DataError, TransientError
from reverse_etl_assets.postgres import catalog, ddl, names

LOCK_TIMEOUT = "2s"
SWAP_ATTEMPTS = 8


@dataclass(frozen=True, kw_only=True)
class SwapPlan:
    """What to swap: the staging table, its indexes (staging name -> final name), readers."""

    schema: str
    table: str
    staging: str
    index_renames: tuple[tuple[str, str], ...]
    readers: tuple[str, ...] = ()
    label: str = ""


def swap_in(
    conn: psycopg.Connection,
    plan: SwapPlan,
    *,
    in_transaction: Callable[[psycopg.Connection], None] | None = None,
) -> None:
    """Swap with `lock_timeout` and retries; `in_transaction` runs inside (the checkpoint)."""
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT))
                )
                _swap(conn, plan)
                if in_transaction is not None:
                    in_transaction(conn)
            return
        except errors.LockNotAvailable as exc:
            if attempt == SWAP_ATTEMPTS:
                raise TransientError(
                    f"synced table {plan.label!r}: could not lock {plan.schema}.{plan.table} for "
                    f"the swap after {attempt} tries ({LOCK_TIMEOUT} each): a long transaction is "
                    "reading or writing it. The live table is unchanged; retry the sync"
                ) from exc
            time.sleep(min(0.2 * 2**attempt, 5.0))


def _swap(conn: psycopg.Connection, plan: SwapPlan) -> None:
    schema, table = plan.schema, plan.table
    # Fully qualified view definitions, whatever the caller's search_path.
    conn.execute("SET LOCAL search_path = pg_catalog")
    live = catalog.table_oid(conn, schema, table)
    views: list[tuple[str, str, str]] = []
    acl: list[tuple[str | None, str]] = []
    if live is not None:
        conn.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(ddl.qualified(schema, table))
        )
        views = _dependent_views(conn, live, plan.label)
        acl = catalog.table_grants(conn, live)
        retired = names.retired_table(table)
        conn.execute(ddl.drop_table(schema, retired))
        for index in catalog.index_names(conn, live):
            conn.execute(ddl.rename_index(schema, index, names.fit_name(index, "retl_old")))
        conn.execute(ddl.rename_table(schema, table, retired))
    conn.execute(ddl.rename_table(schema, plan.staging, table))
    for staging_index, final_index in plan.index_renames:
        conn.execute(ddl.rename_index(schema, staging_index, final_index))
    for role, privilege in acl:
        conn.execute(ddl.grant(privilege, schema, table, role))
    for role in plan.readers:
        conn.execute(ddl.grant_usage(schema, role))
        conn.execute(ddl.grant("SELECT", schema, table, role))
    for view_schema, view_name, definition in views:
        conn.execute(
            sql.SQL("CREATE OR REPLACE VIEW {} AS {}").format(
                sql.Identifier(view_schema, view_name), sql.SQL(definition.rstrip().rstrip(";"))
            )
        )
    if live is not None:
        try:
            conn.execute(ddl.drop_table(schema, names.retired_table(table)))
        except errors.DependentObjectsStillExist as exc:
            raise DataError(
                f"synced table {plan.label!r}: {schema}.{table} cannot be replaced because other "
                f"objects depend on it ({exc.diag.message_detail or exc}). Foreign keys and "
                "materialized views that reference a synced table are not supported: drop them "
                "or point them at a separate table"
            ) from exc


def _dependent_views(conn: psycopg.Connection, oid: int, label: str) -> list[tuple[str, str, str]]:
    rows = catalog.dependent_views(conn, oid)
    views = []
    for view_schema, view_name, kind, definition in rows:
        if kind != "v":
            raise DataError(
                f"synced table {label!r}: materialized view {view_schema}.{view_name} depends on "
                "the synced table and cannot follow a full refresh; drop it or build it on a view"
            )
        views.append((view_schema, view_name, definition))
    return views
