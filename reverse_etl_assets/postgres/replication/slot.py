"""Administer what logical replication needs on the source: publication, slot, server checks.

Ordinary connections, except `create_slot`, which needs a walsender to export its snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import psycopg
from psycopg import sql

from reverse_etl_assets.errors import TransientError
from reverse_etl_assets.postgres.replication.lsn import parse_lsn
from reverse_etl_assets.postgres.replication.messages import RelationColumn
from reverse_etl_assets.postgres.replication.problems import (
    ACTIVE_GRACE_S,
    ReplicationError,
    ServerUnsupported,
    SlotActive,
    classify_server_error,
    first_line,
)
from reverse_etl_assets.postgres.replication.session import connect_replication

MIN_SERVER_VERSION = 140000
# Suggested cap for WAL a stalled slot may hold; past it the server invalidates the slot.
SUGGESTED_MAX_SLOT_WAL_KEEP_SIZE = "50GB"


@dataclass(frozen=True, kw_only=True)
class SlotInfo:
    """A replication slot as pg_replication_slots shows it, with the WAL it holds back."""

    slot: str
    database: str | None
    plugin: str | None
    confirmed_flush_lsn: int | None
    restart_lsn: int | None
    wal_status: str | None
    active_pid: int | None
    retained_wal_bytes: int | None
    current_wal_lsn: int
    invalidated: bool


@dataclass(frozen=True, kw_only=True)
class TableInfo:
    """A table's columns from the catalog, shaped like a Relation message's."""

    schema: str
    table: str
    oid: int
    replica_identity: str
    primary_key: tuple[str, ...]
    columns: tuple[RelationColumn, ...]


class ExportedSlot:
    """A just-created slot whose exported snapshot stays valid until `close()`."""

    def __init__(
        self, *, conn: psycopg.Connection, slot: str, consistent_point: int, snapshot_name: str
    ) -> None:
        self._conn = conn
        self.slot = slot
        self.consistent_point = consistent_point
        self.snapshot_name = snapshot_name

    def close(self) -> None:
        """End the walsender session; the snapshot stops being importable, the slot stays."""
        self._conn.close()

    def __enter__(self) -> ExportedSlot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def create_publication(
    conn: psycopg.Connection,
    name: str,
    *,
    tables: Sequence[tuple[str, str]] = (),
    schemas: Sequence[str] = (),
) -> None:
    """Create a publication for the given tables and/or every table of the given schemas."""
    if not tables and not schemas:
        raise ValueError(f"publication {name} needs at least one table or schema")
    if schemas and conn.info.server_version < 150000:
        raise ServerUnsupported(
            f"publication {name}: publishing whole schemas needs PostgreSQL 15 or later (server "
            f"is {_version_text(conn.info.server_version)}); list the tables instead"
        )
    with conn.transaction():
        conn.execute(build_create_publication(name, tables=tables, schemas=schemas))


def build_create_publication(
    name: str, *, tables: Sequence[tuple[str, str]] = (), schemas: Sequence[str] = ()
) -> sql.Composed:
    """The CREATE PUBLICATION statement for `tables` and `schemas`."""
    parts: list[sql.Composable] = []
    if tables:
        parts.append(
            sql.SQL("TABLE {}").format(sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables))
        )
    if schemas:
        parts.append(
            sql.SQL("TABLES IN SCHEMA {}").format(
                sql.SQL(", ").join(sql.Identifier(s) for s in schemas)
            )
        )
    return sql.SQL("CREATE PUBLICATION {} FOR {}").format(
        sql.Identifier(name), sql.SQL(", ").join(parts)
    )


def publication_exists(conn: psycopg.Connection, name: str) -> bool:
    """Whether the current database has a publication called `name`."""
    row = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [name]).fetchone()
    return row is not None


def drop_publication(conn: psycopg.Connection, name: str) -> None:
    """Drop the publication if it exists."""
    with conn.transaction():
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))


def published_tables(conn: psycopg.Connection, name: str) -> list[tuple[str, str]]:
    """The (schema, table) pairs the publication covers now, sorted."""
    rows = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1, 2",
        [name],
    ).fetchall()
    return [(schema, table) for schema, table in rows]


def create_slot(dsn: str, slot: str) -> ExportedSlot:
    """Create a pgoutput slot exporting a snapshot; keep the result open while reading it."""
    try:
        conn = connect_replication(dsn, application_name=f"reverse_etl_create_{slot}")
    except psycopg.OperationalError as exc:
        raise TransientError(
            f"cannot open a replication connection to create slot {slot}: {first_line(exc)}"
        ) from exc
    try:
        # PostgreSQL 15 added the option list; 14 knows only the legacy keyword.
        if conn.info.server_version >= 150000:
            command = "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')"
        else:
            command = "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT"
        row = conn.execute(sql.SQL(command).format(sql.Identifier(slot))).fetchone()
    except psycopg.Error as exc:
        conn.close()
        if exc.sqlstate == "42710":
            raise ReplicationError(
                f"replication slot {slot} already exists; a slot is created only at the first "
                "sync: drop it with `delete NAME` (or pg_drop_replication_slot) and sync again"
            ) from exc
        raise classify_server_error(
            exc.sqlstate, exc.diag.message_primary or str(exc), slot=slot
        ) from exc
    assert row is not None
    _name, consistent_point, snapshot_name, _plugin = row
    return ExportedSlot(
        conn=conn,
        slot=slot,
        consistent_point=parse_lsn(consistent_point),
        snapshot_name=snapshot_name,
    )


def drop_slot(conn: psycopg.Connection, slot: str) -> None:
    """Drop the slot if it exists; refuses (terminal) while another session streams from it."""
    give_up = time.monotonic() + ACTIVE_GRACE_S
    while True:
        try:
            with conn.transaction():
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE slot_name = %s",
                    [slot],
                )
            return
        except psycopg.Error as exc:
            error = classify_server_error(
                exc.sqlstate, exc.diag.message_primary or str(exc), slot=slot
            )
            if isinstance(error, SlotActive) and time.monotonic() < give_up:
                time.sleep(0.05)
                continue
            raise error from exc


def slot_info(conn: psycopg.Connection, slot: str) -> SlotInfo | None:
    """The slot's positions, WAL status and holder, or None when there is no such slot."""
    available = _slot_view_columns(conn)
    invalid_terms = [sql.SQL("wal_status = 'lost'")]
    if "conflicting" in available:  # PostgreSQL 16+
        invalid_terms.append(sql.SQL("coalesce(conflicting, false)"))
    if "invalidation_reason" in available:  # PostgreSQL 17+
        invalid_terms.append(sql.SQL("invalidation_reason IS NOT NULL"))
    query = sql.SQL(
        """
        SELECT database, plugin, confirmed_flush_lsn::text, restart_lsn::text, wal_status,
               active_pid, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
               pg_current_wal_lsn()::text, coalesce({invalid}, false)
        FROM pg_replication_slots WHERE slot_name = %s
        """
    ).format(invalid=sql.SQL(" OR ").join(invalid_terms))
    row = conn.execute(query, [slot]).fetchone()
    if row is None:
        return None
    database, plugin, confirmed, restart, wal_status, pid, retained, current, invalid = row
    return SlotInfo(
        slot=slot,
        database=database,
        plugin=plugin,
        confirmed_flush_lsn=parse_lsn(confirmed) if confirmed else None,
        restart_lsn=parse_lsn(restart) if restart else None,
        wal_status=wal_status,
        active_pid=pid,
        retained_wal_bytes=retained,
        current_wal_lsn=parse_lsn(current),
        invalidated=bool(invalid),
    )


def server_problems(conn: psycopg.Connection) -> list[str]:
    """What stops logical replication from working here, each with its exact fix."""
    problems = []
    version = conn.info.server_version
    if version < MIN_SERVER_VERSION:
        problems.append(
            f"PostgreSQL {_version_text(version)} is too old for lakehouse syncs: "
            "upgrade to 14 or later"
        )
    row = conn.execute(
        "SELECT current_setting('wal_level'), current_user,"
        " (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),"
        " current_setting('max_replication_slots')::int"
    ).fetchone()
    assert row is not None
    wal_level, role, can_replicate, max_slots = row
    if wal_level != "logical":
        problems.append(
            f"wal_level is {wal_level}, logical replication needs logical: run "
            "ALTER SYSTEM SET wal_level = logical; then restart the server"
        )
    if not can_replicate:
        role_sql = sql.Identifier(role).as_string(conn)
        problems.append(
            f"role {role} may not use replication: run ALTER ROLE {role_sql} REPLICATION; "
            "as a superuser"
        )
    if max_slots == 0:
        problems.append(
            "max_replication_slots is 0: run ALTER SYSTEM SET max_replication_slots = 10; "
            "then restart the server"
        )
    return problems


def server_warnings(conn: psycopg.Connection) -> list[str]:
    """What works but risks the server, each with a suggested change."""
    warnings = []
    row = conn.execute("SELECT current_setting('max_slot_wal_keep_size')").fetchone()
    assert row is not None
    if row[0] == "-1":
        warnings.append(
            "max_slot_wal_keep_size is -1 (unlimited): a stalled slot keeps WAL until the disk "
            "fills; cap it, e.g. ALTER SYSTEM SET max_slot_wal_keep_size = "
            f"'{SUGGESTED_MAX_SLOT_WAL_KEEP_SIZE}'; SELECT pg_reload_conf(); (a slot that "
            "exceeds it is invalidated and needs a full refresh)"
        )
    return warnings


def table_columns(conn: psycopg.Connection, schema: str, table: str) -> TableInfo | None:
    """The table's live columns in order, with key flags, or None when it does not exist.

    Like pgoutput (before PostgreSQL 18), without generated columns: the stream never carries
    their values, so a snapshot that copied them would leave values no later change updates."""
    head = conn.execute(
        """
        SELECT c.oid, c.relreplident::text,
               array(SELECT a.attname::text FROM pg_index i
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                     WHERE i.indrelid = c.oid AND i.indisprimary
                     ORDER BY array_position(i.indkey::int2[], a.attnum)),
               array(SELECT a.attname::text FROM pg_index i
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                     WHERE i.indrelid = c.oid AND i.indisreplident)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
        """,
        [schema, table],
    ).fetchone()
    if head is None:
        return None
    oid, replica_identity, primary_key, identity_index = head
    # Like pgoutput: the replica identity index names the key when one is set.
    keys = set(identity_index if replica_identity == "i" else primary_key)
    rows = conn.execute(
        "SELECT attname::text, atttypid::int8, atttypmod FROM pg_attribute"
        " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = ''"
        " ORDER BY attnum",
        [oid],
    ).fetchall()
    columns = tuple(
        RelationColumn(name=name, type_oid=type_oid, type_modifier=typmod, is_key=name in keys)
        for name, type_oid, typmod in rows
    )
    return TableInfo(
        schema=schema,
        table=table,
        oid=oid,
        replica_identity=replica_identity,
        primary_key=tuple(primary_key),
        columns=columns,
    )


def older_row_values(
    conn: psycopg.Connection, schema: str, table: str, columns: Sequence[str]
) -> dict[str, bytes]:
    """For each of `columns` added with a constant DEFAULT, the text form of the value Postgres
    reports for rows older than the column (pg_attribute.attmissingval); others are absent."""
    rows = conn.execute(
        "SELECT a.attname::text, (a.attmissingval::text::text[])[1] FROM pg_attribute a"
        " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attname = ANY(%s)"
        " AND a.attnum > 0 AND NOT a.attisdropped AND a.atthasmissing",
        [schema, table, list(columns)],
    ).fetchall()
    return {name: value.encode() for name, value in rows if value is not None}


def _slot_view_columns(conn: psycopg.Connection) -> set[str]:
    """The columns pg_replication_slots has on this server version."""
    rows = conn.execute(
        "SELECT attname::text FROM pg_attribute"
        " WHERE attrelid = 'pg_catalog.pg_replication_slots'::regclass AND attnum > 0"
    ).fetchall()
    return {name for (name,) in rows}


def _version_text(version: int) -> str:
    """150004 -> '15.4'."""
    return f"{version // 10000}.{version % 10000}"
