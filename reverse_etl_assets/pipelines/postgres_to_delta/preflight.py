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
        if (info.schema, info.table) in named and sync.mirror and not info.primary_key:
            raise SpecError(
                f"lakehouse sync {sync.name!r}: `mirror: true` but {label} has no primary key, so "
                f"its rows cannot be merged by key. Add one (ALTER TABLE {label} ADD PRIMARY KEY "
                "(...)), or set `mirror: false` for a history only (its updates and deletes also "
                f"need ALTER TABLE {label} REPLICA IDENTITY FULL)"
            )
        if info.replica_identity == "n" or (info.replica_identity == "d" and not info.primary_key):
            # Postgres refuses UPDATE and DELETE on a published table without a replica
            # identity: publishing it would break the application's own writes.
            raise SpecError(
                f"lakehouse sync {sync.name!r}: {label} has no replica identity (no primary key, "
                "or REPLICA IDENTITY NOTHING); once it is published, Postgres refuses every "
                "UPDATE and DELETE the application runs on it. Add a primary key, or run ALTER "
                f"TABLE {label} REPLICA IDENTITY FULL (it then gets a history only), or leave its "
                "schema out and list the other tables under `tables`"
            )
        identity = {c.name for c in info.columns if c.is_key}
        if sync.mirror and info.replica_identity == "i" and identity != set(info.primary_key):
            # A delete (or a key change) then names its row by the index's columns only, and the
            # mirror, merged by primary key, could not find the row: it would stay.
            raise SpecError(
                f"lakehouse sync {sync.name!r}: {label} has REPLICA IDENTITY USING INDEX on "
                f"({', '.join(sorted(identity))}), not its primary key, so its deletes and key "
                "changes would not name the mirror's rows. Run ALTER TABLE "
                f"{label} REPLICA IDENTITY DEFAULT (or FULL), or set `mirror: false`"
            )
        if not sync.mirror or info.primary_key:
            continue
        warnings.append(
            f"lakehouse sync {sync.name!r}: {label} has no primary key: it gets a history only"
        )
    return tables, warnings
