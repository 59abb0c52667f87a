"""Check a synced table against its Delta source before anything is written.

Keys, indexes, types, names and (for incremental modes) the Change Data Feed; one message each.
"""

from __future__ import annotations

import psycopg

from reverse_etl_assets.delta.cdf_columns import CDF_COLUMNS
from reverse_etl_assets.delta.reader import SourceSnapshot
from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.postgres import catalog
from reverse_etl_assets.postgres.names import MAX_NAME_BYTES
from reverse_etl_assets.schema.delta_to_postgres import PgColumn, pg_columns
from reverse_etl_assets.spec import SyncedTable
from reverse_etl_assets.transform.changes import RESERVED_PREFIX


def check_source(table: SyncedTable, source: SourceSnapshot) -> tuple[PgColumn, ...]:
    """The Postgres columns of `table`, or a SpecError saying what to fix."""
    where = f"synced table {table.name!r}"
    names = source.schema.names
    for name in names:
        if len(name.encode()) > MAX_NAME_BYTES:
            raise SpecError(
                f"{where}: source column {name!r} is longer than {MAX_NAME_BYTES} bytes, the "
                "Postgres limit; rename it in the source (or a view of it)"
            )
        if name in CDF_COLUMNS:
            raise SpecError(
                f"{where}: source column {name!r} collides with a Change Data Feed column; "
                "rename it in the source"
            )
        if name.startswith(RESERVED_PREFIX):
            raise SpecError(
                f"{where}: source column {name!r} starts with {RESERVED_PREFIX!r}, which "
                "reverse_etl_assets reserves for its own columns while an increment lands; "
                "rename it in the source (or a view of it)"
            )
    for field, named in (
        ("primary_key", table.primary_key),
        ("timeseries_key", (table.timeseries_key,) if table.timeseries_key else ()),
        *((f"indexes[{i}]", ix) for i, ix in enumerate(table.indexes)),
    ):
        missing = [c for c in named if c not in names]
        if missing:
            raise SpecError(
                f"{where}: `{field}` names column(s) {missing} that the source {table.source} "
                f"does not have; its columns are {names}"
            )
    columns = pg_columns(source.schema, table=table.name)
    by_name = {c.name: c for c in columns}
    for key in table.primary_key:
        if by_name[key].ddl == "jsonb":
            raise SpecError(
                f"{where}: `primary_key` column {key!r} is an array/map/struct; "
                "a key must be a scalar column"
            )
    if table.timeseries_key is not None and by_name[table.timeseries_key].ddl in _UNORDERED:
        found = by_name[table.timeseries_key].ddl
        raise SpecError(
            f"{where}: `timeseries_key` {table.timeseries_key!r} is a {found} column, which has "
            "no latest value; use a timestamp, date, number, decimal or string column"
        )
    if table.mode != "snapshot" and not source.cdf_enabled:
        raise SpecError(enable_cdf_message(table))
    return columns


# Postgres types with no max(): no latest row per key by them (jsonb: an array/map/struct).
_UNORDERED = ("boolean", "bytea", "jsonb")


def enable_cdf_message(table: SyncedTable) -> str:
    """Why an incremental table needs the Change Data Feed, and the exact ways to turn it on."""
    return (
        f"synced table {table.name!r}: `mode: {table.mode}` reads the Delta Change Data Feed, "
        f"which is not enabled on source {table.source}. Enable it with "
        f"`reverse-etl enable-cdf {table.source}`, or in SQL: ALTER TABLE <source> SET "
        "TBLPROPERTIES (delta.enableChangeDataFeed = true), or in Python: "
        f"DeltaTable({table.source_uri!r}).alter.set_table_properties("
        "{'delta.enableChangeDataFeed': 'true'}); or use `mode: snapshot`"
    )


def check_readers(conn: psycopg.Connection, table: SyncedTable) -> None:
    """Every role in `readers` exists on the server, or a SpecError naming the missing ones."""
    missing = catalog.missing_roles(conn, table.readers)
    if missing:
        roles = ", ".join(missing)
        raise SpecError(
            f"synced table {table.name!r}: `readers` names role(s) that do not exist on the "
            f"target Postgres: {roles}. Create them (CREATE ROLE {missing[0]} NOLOGIN) or remove "
            "them from `readers`"
        )
