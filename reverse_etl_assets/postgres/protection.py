"""Read-only protection of synced tables: only the pipeline writes them.

A guard trigger, enabled ALWAYS (so `session_replication_role = replica` does not bypass it),
refuses INSERT / UPDATE / DELETE / TRUNCATE unless the writer is the pipeline's role inside a
pipeline transaction; other roles also lose every privilege but SELECT.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from reverse_etl_assets.errors import ConfigError
from reverse_etl_assets.postgres import catalog, ddl
from reverse_etl_assets.postgres.state import STATE_SCHEMA

GUARD_FUNCTION = "refuse_writes_to_synced_table"
GUARD_TRIGGER = "reverse_etl_read_only"
WRITER_SETTING = "reverse_etl.writer"
WRITE_PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")

# Hardened like a SECURITY DEFINER function although it is not one: the search_path is fixed on
# the function (a caller's `SET search_path = own, pg_catalog` cannot bring in its own `=`), and
# every operator and function is schema-qualified anyway. The proof of being the pipeline is the
# identity of the session: both session_user (which an ordinary role cannot change) and
# current_user (SET ROLE, SECURITY DEFINER functions) must be the role recorded when the table was
# protected. The transaction-local setting only marks a pipeline transaction, so that the
# pipeline's own role typing SQL by hand is refused too; on its own it proves nothing.
_FUNCTION = sql.SQL(
    """
    CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $guard$
    BEGIN
        IF CAST(session_user AS pg_catalog.text) OPERATOR(pg_catalog.=) TG_ARGV[0]
           AND CAST(current_user AS pg_catalog.text) OPERATOR(pg_catalog.=) TG_ARGV[0]
           AND COALESCE(pg_catalog.current_setting({setting}, true), '')
               OPERATOR(pg_catalog.=) 'on' THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'table %.% is a synced table, written only by the reverse_etl pipeline',
            TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = pg_catalog.format(
                      'It is kept equal to the Delta table %s; %s by role %s is refused.',
                      TG_ARGV[1], TG_OP, current_user),
                  HINT = 'Change the data in Delta and sync again. To add columns of your own, '
                         'create a separate table keyed by the same primary key and join it at '
                         'query time.';
    END
    $guard$
    """
)


def ensure_guard_function(conn: psycopg.Connection) -> None:
    """Create (or update) the guard trigger function in the state schema."""
    with conn.transaction():
        # Two sessions replacing one function at once fail with "tuple concurrently updated".
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('reverse_etl.state'))")
        conn.execute(
            _FUNCTION.format(
                function=sql.Identifier(STATE_SCHEMA, GUARD_FUNCTION),
                setting=sql.Literal(WRITER_SETTING),
            )
        )


def protect_table(conn: psycopg.Connection, *, schema: str, table: str, source: str) -> None:
    """Attach the guard (enabled ALWAYS) and take write privileges from every other role."""
    target = ddl.qualified(schema, table)
    row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    oid = catalog.table_oid(conn, schema, table)
    assert oid is not None, f"{schema}.{table} must exist before it is protected"
    grantees = sorted({role for role, _ in catalog.table_grants(conn, oid) if role is not None})
    statements = protect_statements(target, writer=row[0], source=source, grantees=grantees)
    current = catalog.trigger_arguments(conn, schema, table, GUARD_TRIGGER)
    if current == ("A", f"{STATE_SCHEMA}.{GUARD_FUNCTION}", [row[0], source]):
        # Already guarded as asked: dropping the trigger would take an ACCESS EXCLUSIVE lock
        # (readers would wait) for nothing. Only the privileges are taken again.
        statements = statements[3:]
    for statement in statements:
        conn.execute(statement)


def is_protected(conn: psycopg.Connection, *, schema: str, table: str) -> bool:
    """Whether the guard trigger is on the table and enabled ALWAYS."""
    return catalog.trigger_enabled(conn, schema, table, GUARD_TRIGGER) == "A"


def protect_statements(
    target: sql.Composable, *, writer: str, source: str, grantees: list[str]
) -> list[sql.Composed]:
    """The statements that make `target` read-only for everyone but `writer`."""
    trigger = sql.Identifier(GUARD_TRIGGER)
    args = sql.SQL("{}, {}").format(sql.Literal(writer), sql.Literal(source))
    function = sql.Identifier(STATE_SCHEMA, GUARD_FUNCTION)
    return [
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(trigger, target),
        sql.SQL(
            "CREATE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} "
            "FOR EACH STATEMENT EXECUTE FUNCTION {}({})"
        ).format(trigger, target, function, args),
        sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}").format(target, trigger),
        *(
            sql.SQL("REVOKE {} ON {} FROM {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in WRITE_PRIVILEGES),
                target,
                sql.SQL("PUBLIC") if role is None else sql.Identifier(role),
            )
            for role in [None, *grantees]
        ),
    ]


def allow_pipeline_writes(conn: psycopg.Connection) -> None:
    """Mark the current transaction as the pipeline's (the guard lets its writes through)."""
    conn.execute("SELECT pg_catalog.set_config(%s, 'on', true)", (WRITER_SETTING,))


def refuse_foreign_triggers(
    conn: psycopg.Connection, *, schema: str, table: str, label: str
) -> None:
    """Stop before writing when the table carries a trigger the pipeline did not create.

    A role holding the TRIGGER privilege (a hand-made GRANT ALL) could attach one; it would run
    with the pipeline's identity inside a pipeline transaction, i.e. past the guard.
    """
    oid = catalog.table_oid(conn, schema, table)
    if oid is None:
        return
    foreign = [name for name, _ in catalog.user_triggers(conn, oid) if name != GUARD_TRIGGER]
    if foreign:
        raise ConfigError(
            f"synced table {label!r}: {schema}.{table} carries trigger(s) {foreign} that the "
            "pipeline did not create; they would run with the pipeline's rights on every sync. "
            "Nothing was written. Drop them (and the TRIGGER privilege that allowed them), then "
            "sync again"
        )
