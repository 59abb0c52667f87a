"""Checks of a lakehouse sync against its source server before anything is created: the
server's settings and privileges, the tables, and whether each can have a mirror."""

from __future__ import annotations

import psycopg

from reverse_etl_assets.errors import ConfigError, SpecError
from reverse_etl_assets.pipelines.postgres_to_delta.snapshot import resolve_tables
from reverse_etl_assets.postgres.replication import slot as slots
from reverse_etl_assets.spec import LakehouseSync


def check_lakehouse(
    conn: psycopg.Connection, sync: LakehouseSync
) -> tuple[list[slots.TableInfo], list[str]]:
    """Raise on what stops the sync (with the exact fix); return the tables it streams and the
    warnings worth printing."""
    problems = slots.server_problems(conn)
    if problems:
        raise ConfigError(f"lakehouse sync {sync.name!r}: " + "; ".join(problems))
    tables = resolve_tables(conn, sync)
    named = set(sync.tables)
    warnings = [f"lakehouse sync {sync.name!r}: {w}" for w in slots.server_warnings(conn)]
    for info in tables:
        label = f"{info.schema}.{info.table}"
        if not sync.mirror and info.replica_identity != "f":
            # Postgres does not resend a large value an update left unchanged; without a mirror
            # to take it from, only a full preimage carries it (never a NULL placeholder).
            raise SpecError(
                f"lakehouse sync {sync.name!r}: `mirror: false` but {label} has REPLICA IDENTITY "
                "DEFAULT, so an update that leaves a large (TOASTed) value unchanged would reach "
                f"the history without it. Run ALTER TABLE {label} REPLICA IDENTITY FULL, or keep "
                "`mirror: true`"
            )
        if not sync.mirror or info.primary_key:
            continue
        if (info.schema, info.table) in named:
            raise SpecError(
                f"lakehouse sync {sync.name!r}: `mirror: true` but {label} has no primary key, so "
                f"its rows cannot be merged by key. Add one (ALTER TABLE {label} ADD PRIMARY KEY "
                "(...)), or set `mirror: false` for a history only (its updates and deletes also "
                f"need ALTER TABLE {label} REPLICA IDENTITY FULL)"
            )
        warnings.append(
            f"lakehouse sync {sync.name!r}: {label} has no primary key: it gets a history only"
        )
    return tables, warnings
