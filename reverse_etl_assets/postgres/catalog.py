"""Read-only questions to the Postgres catalog: tables, columns, grants, views, indexes, roles.

Every catalog query of the package lives here, so a newcomer finds them in one place.
"""

from __future__ import annotations

import psycopg


def table_oid(conn: psycopg.Connection, schema: str, table: str) -> int | None:
    """The oid of the ordinary or partitioned table `schema.table`, None when there is none."""
    row = conn.execute(
        "SELECT c.oid FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (schema, table),
    ).fetchone()
    return None if row is None else int(row[0])


def column_types(conn: psycopg.Connection, schema: str, table: str) -> dict[str, str]:
    """The table's columns and their types as `format_type` spells them, in order (empty when
    the table does not exist)."""
    rows = conn.execute(
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) "
        "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        (schema, table),
    ).fetchall()
    return {name: pg_type for name, pg_type in rows}


def dependent_views(conn: psycopg.Connection, oid: int) -> list[tuple[str, str, str, str]]:
    """(schema, name, relkind, definition) of each view or materialized view over table `oid`."""
    rows = conn.execute(
        """
        SELECT DISTINCT vn.nspname, v.relname, v.relkind, pg_catalog.pg_get_viewdef(v.oid)
        FROM pg_catalog.pg_depend d
        JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
        JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
        JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace
        WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
          AND d.refobjid = %s AND v.oid <> %s
        """,
        (oid, oid),
    ).fetchall()
    return [(schema, name, kind, definition) for schema, name, kind, definition in rows]


def table_grants(conn: psycopg.Connection, oid: int) -> list[tuple[str | None, str]]:
    """(grantee, privilege) of every privilege granted on table `oid` to a role other than its
    owner; the grantee is None for PUBLIC."""
    rows = conn.execute(
        """
        SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee) END,
               a.privilege_type
        FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
        WHERE c.oid = %s AND a.grantee <> c.relowner
        """,
        (oid,),
    ).fetchall()
    return [(role, privilege) for role, privilege in rows]


def index_names(conn: psycopg.Connection, oid: int) -> list[str]:
    """The names of the indexes on table `oid`."""
    rows = conn.execute(
        "SELECT i.relname FROM pg_catalog.pg_index x "
        "JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = %s",
        (oid,),
    ).fetchall()
    return [r[0] for r in rows]


def trigger_enabled(conn: psycopg.Connection, schema: str, table: str, trigger: str) -> str | None:
    """pg_trigger.tgenabled of `trigger` on the table ('O', 'D', 'R', 'A'), None when absent."""
    row = conn.execute(
        "SELECT t.tgenabled FROM pg_catalog.pg_trigger t "
        "JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND t.tgname = %s",
        (schema, table, trigger),
    ).fetchone()
    return None if row is None else str(row[0])


def primary_key_columns(conn: psycopg.Connection, oid: int) -> tuple[str, ...]:
    """The columns of table `oid`'s primary key, in key order (empty when it has none)."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_catalog.pg_index x "
        "CROSS JOIN LATERAL pg_catalog.unnest(x.indkey) WITH ORDINALITY AS k(attnum, pos) "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum "
        "WHERE x.indrelid = %s AND x.indisprimary ORDER BY k.pos",
        (oid,),
    ).fetchall()
    return tuple(r[0] for r in rows)


def trigger_arguments(
    conn: psycopg.Connection, schema: str, table: str, trigger: str
) -> tuple[str, str, list[str]] | None:
    """(tgenabled, schema.function, arguments) of `trigger` on the table, or None."""
    row = conn.execute(
        "SELECT t.tgenabled, fn.nspname || '.' || f.proname, t.tgargs "
        "FROM pg_catalog.pg_trigger t "
        "JOIN pg_catalog.pg_proc f ON f.oid = t.tgfoid "
        "JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace "
        "JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND t.tgname = %s",
        (schema, table, trigger),
    ).fetchone()
    if row is None:
        return None
    raw = bytes(row[2]).decode()
    return str(row[0]), str(row[1]), raw.split("\x00")[:-1] if raw else []


def user_triggers(conn: psycopg.Connection, oid: int) -> list[tuple[str, str]]:
    """(trigger name, owner of its function) of every non-internal trigger on table `oid`."""
    rows = conn.execute(
        "SELECT t.tgname, pg_catalog.pg_get_userbyid(p.proowner) FROM pg_catalog.pg_trigger t "
        "JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid "
        "WHERE t.tgrelid = %s AND NOT t.tgisinternal ORDER BY t.tgname",
        (oid,),
    ).fetchall()
    return [(str(name), str(owner)) for name, owner in rows]


def missing_roles(conn: psycopg.Connection, roles: list[str] | tuple[str, ...]) -> list[str]:
    """The roles of `roles` that do not exist on the server, in the order given."""
    if not roles:
        return []
    rows = conn.execute(
        "SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)", (list(roles),)
    ).fetchall()
    present = {r[0] for r in rows}
    return [role for role in roles if role not in present]
