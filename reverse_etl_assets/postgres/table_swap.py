"""Swap a freshly loaded table in for the live one in one short transaction.

Grants and the canonical index names move to the new table; readers see the old table or the new
one, never an empty or partial one. A table that views depend on is refreshed in place instead
(its rows change, the table stays), so the views are never touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import errors, sql

from reverse_etl_assets.errors import DataError, TransientError
from reverse_etl_assets.postgres import apply, catalog, ddl, names, protection

LOCK_TIMEOUT = "2s"
SWAP_ATTEMPTS = 8


@dataclass(frozen=True, kw_only=True)
class SwapPlan:
    """What to swap: the staging table, its indexes (staging name -> final name), readers; and,
    for a refresh in place, the key and the secondary indexes the live table must have."""

    schema: str
    table: str
    staging: str
    index_renames: tuple[tuple[str, str], ...]
    readers: tuple[str, ...] = ()
    label: str = ""
    primary_key: tuple[str, ...] = ()
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # final name, columns


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
    conn.execute("SET LOCAL search_path = pg_catalog")
    live = catalog.table_oid(conn, schema, table)
    if live is not None and catalog.dependent_views(conn, live):
        _refresh_in_place(conn, plan, live)
        return
    if live is not None:
        conn.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(ddl.qualified(schema, table))
        )
        if catalog.dependent_views(conn, live):  # created since the look above
            _refresh_in_place(conn, plan, live)
            return
        acl = catalog.table_grants(conn, live)
        retired = names.retired_table(table)
        conn.execute(ddl.drop_table(schema, retired))
        for index in catalog.index_names(conn, live):
            conn.execute(ddl.rename_index(schema, index, names.fit_name(index, "retl_old")))
        conn.execute(ddl.rename_table(schema, table, retired))
    else:
        acl = []
    conn.execute(ddl.rename_table(schema, plan.staging, table))
    for staging_index, final_index in plan.index_renames:
        conn.execute(ddl.rename_index(schema, staging_index, final_index))
    for role, privilege in acl:
        conn.execute(ddl.grant(privilege, schema, table, role))
    _grant_readers(conn, plan)
    if live is not None:
        try:
            conn.execute(ddl.drop_table(schema, names.retired_table(table)))
        except errors.DependentObjectsStillExist as exc:
            raise DataError(
                f"synced table {plan.label!r}: {schema}.{table} cannot be replaced because other "
                f"objects depend on it ({exc.diag.message_detail or exc}). Foreign keys that "
                "reference a synced table are not supported: drop them or point them at a "
                "separate table"
            ) from exc


def _grant_readers(conn: psycopg.Connection, plan: SwapPlan) -> None:
    for role in plan.readers:
        conn.execute(ddl.grant_usage(plan.schema, role))
        conn.execute(ddl.grant("SELECT", plan.schema, plan.table, role))


def _refresh_in_place(conn: psycopg.Connection, plan: SwapPlan, live: int) -> None:
    """Make the live table equal to the staging table without replacing it.

    Views (and materialized views) of other roles depend on the live table by oid: replacing it
    would mean re-creating them, which needs rights over their schemas and loses their options,
    owner, grants and comments. So the rows move instead: the keys gone from the source are
    deleted and the changed rows upserted (unchanged rows are not written), under ROW EXCLUSIVE
    locks that readers never wait for; they see the old rows until the commit.
    """
    schema, table, label = plan.schema, plan.table, plan.label
    views = sorted({f"{s}.{n}" for s, n, _kind, _definition in catalog.dependent_views(conn, live)})
    live_columns = catalog.column_types(conn, schema, table)
    new_columns = catalog.column_types(conn, schema, plan.staging)
    kept = list(new_columns.items())[: len(live_columns)]
    if kept != list(live_columns.items()):
        raise DataError(
            f"synced table {label!r}: {views} depend on {schema}.{table} and this refresh "
            f"changes its columns (from {live_columns} to {new_columns}); only added columns can "
            "be followed without re-creating them. Drop the views, sync, then create them again"
        )
    key = catalog.primary_key_columns(conn, live)
    if key != plan.primary_key:
        raise DataError(
            f"synced table {label!r}: {views} depend on {schema}.{table} and this refresh "
            f"changes its primary key from {list(key)} to {list(plan.primary_key)}. Drop the "
            "views, sync, then create them again"
        )
    protection.refuse_foreign_triggers(conn, schema=schema, table=table, label=label)
    target = ddl.qualified(schema, table)
    for column, pg_type in list(new_columns.items())[len(live_columns) :]:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                target, sql.Identifier(column), sql.SQL(pg_type)
            )
        )
    protection.allow_pipeline_writes(conn)
    staging = ddl.qualified(schema, plan.staging)
    if key:
        conn.execute(apply.delete_missing_statement(schema, table, staging, key))
        conn.execute(
            apply.upsert_statement(schema, table, tuple(new_columns), key, None, source=staging)
        )
    else:
        conn.execute(sql.SQL("DELETE FROM {}").format(target))
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(target, staging))
    present = set(catalog.index_names(conn, live))
    for final_index, columns in plan.indexes:
        if final_index not in present:
            conn.execute(ddl.create_index(schema, table, final_index, columns))
    conn.execute(ddl.drop_table(schema, plan.staging))
    _grant_readers(conn, plan)
