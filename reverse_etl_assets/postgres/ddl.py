"""Pure builders of the SQL the writer runs; names always go through psycopg.sql.

Nothing here executes anything, so every statement is unit-tested as text.
"""

from __future__ import annotations

from psycopg import sql

from reverse_etl_assets.schema.delta_to_postgres import PgColumn


def qualified(schema: str, table: str) -> sql.Composed:
    """`"schema"."table"`."""
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def create_schema(schema: str) -> sql.Composed:
    """CREATE SCHEMA IF NOT EXISTS."""
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))


def create_table(
    schema: str, table: str, columns: tuple[PgColumn, ...], *, fillfactor: int | None = None
) -> sql.Composed:
    """CREATE TABLE with the mapped column types and no constraints (the fast load target);
    a fillfactor below 100 leaves room on each page for in-place (HOT) updates."""
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.ddl)) for c in columns
    )
    statement = sql.SQL("CREATE TABLE {} ({})").format(qualified(schema, table), cols)
    if fillfactor is not None:
        statement += sql.SQL(" WITH (fillfactor = {})").format(sql.Literal(fillfactor))
    return statement


def drop_table(schema: str, table: str) -> sql.Composed:
    """DROP TABLE IF EXISTS (no CASCADE: dependants make it fail loudly)."""
    return sql.SQL("DROP TABLE IF EXISTS {}").format(qualified(schema, table))


def copy_from_stdin(schema: str, table: str, columns: tuple[PgColumn, ...]) -> sql.Composed:
    """COPY ... FROM STDIN in binary format, columns listed in wire order."""
    cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(qualified(schema, table), cols)


def add_primary_key(schema: str, table: str, constraint: str, key: tuple[str, ...]) -> sql.Composed:
    """ALTER TABLE ... ADD CONSTRAINT ... PRIMARY KEY (fails on duplicate or NULL keys)."""
    return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
        qualified(schema, table),
        sql.Identifier(constraint),
        sql.SQL(", ").join(sql.Identifier(k) for k in key),
    )


def create_index(schema: str, table: str, index: str, columns: tuple[str, ...]) -> sql.Composed:
    """CREATE INDEX on the given columns."""
    return sql.SQL("CREATE INDEX {} ON {} ({})").format(
        sql.Identifier(index),
        qualified(schema, table),
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
    )


def rename_table(schema: str, table: str, new_name: str) -> sql.Composed:
    """ALTER TABLE ... RENAME TO."""
    return sql.SQL("ALTER TABLE {} RENAME TO {}").format(
        qualified(schema, table), sql.Identifier(new_name)
    )


def rename_index(schema: str, index: str, new_name: str) -> sql.Composed:
    """ALTER INDEX ... RENAME TO (also renames the constraint a primary-key index backs)."""
    return sql.SQL("ALTER INDEX {} RENAME TO {}").format(
        qualified(schema, index), sql.Identifier(new_name)
    )


def grant(privilege: str, schema: str, table: str, role: str | None) -> sql.Composed:
    """GRANT a table privilege to a role (None = PUBLIC)."""
    grantee = sql.SQL("PUBLIC") if role is None else sql.Identifier(role)
    return sql.SQL("GRANT {} ON {} TO {}").format(
        sql.SQL(privilege), qualified(schema, table), grantee
    )


def grant_usage(schema: str, role: str) -> sql.Composed:
    """GRANT USAGE on a schema."""
    return sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
        sql.Identifier(schema), sql.Identifier(role)
    )


def duplicate_keys(schema: str, table: str, key: tuple[str, ...], limit: int) -> sql.Composed:
    """The most repeated keys of a table, with their counts."""
    cols = sql.SQL(", ").join(sql.Identifier(k) for k in key)
    return sql.SQL(
        "SELECT {cols}, count(*) FROM {t} GROUP BY {cols} ORDER BY count(*) DESC LIMIT {n}"
    ).format(cols=cols, t=qualified(schema, table), n=sql.Literal(limit))


# A comparison in the database's default collation (see `byte_order`).
DEFAULT_ORDER = sql.SQL("")


def byte_order(columns: tuple[PgColumn, ...], timeseries_key: str) -> sql.Composable:
    """What follows the timeseries key in a comparison: ` COLLATE "C"` for a text column, so the
    latest row per key is the latest by bytes, as Delta and verify compare strings, whatever
    the database's default collation; nothing for other types."""
    text = any(c.name == timeseries_key and c.ddl == "text" for c in columns)
    return sql.SQL(' COLLATE "C"') if text else DEFAULT_ORDER


def keep_latest(
    schema: str,
    table: str,
    key: tuple[str, ...],
    timeseries_key: str,
    *,
    order: sql.Composable = DEFAULT_ORDER,
) -> sql.Composed:
    """Delete every row but the latest (by `timeseries_key`, compared with `order`, see
    `byte_order`) of each key; ties all stay."""
    cols = sql.SQL(", ").join(sql.Identifier(k) for k in key)
    return sql.SQL(
        "DELETE FROM {t} s USING (SELECT ctid FROM (SELECT ctid, rank() OVER "
        "(PARTITION BY {cols} ORDER BY {ts}{order} DESC NULLS LAST) AS r FROM {t}) ranked "
        "WHERE r > 1) d WHERE s.ctid = d.ctid"
    ).format(t=qualified(schema, table), cols=cols, ts=sql.Identifier(timeseries_key), order=order)


def select_all(schema: str, table: str) -> sql.Composed:
    """SELECT * FROM the table."""
    return sql.SQL("SELECT * FROM {}").format(qualified(schema, table))
