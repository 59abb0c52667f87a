"""Connections for replication and snapshot reads, with settings that fix the values' text forms.

Text forms must not depend on the server's or role's config, so the session pins them.
"""

from __future__ import annotations

import psycopg

from reverse_etl_assets.postgres.connect import parse_dsn

# ISO dates, UTC offsets, full float precision and hex bytea: the casts in `schema` expect these.
SESSION_OPTIONS = (
    "-c datestyle=ISO,MDY -c timezone=UTC -c intervalstyle=postgres "
    "-c extra_float_digits=3 -c bytea_output=hex"
)


def connect_replication(dsn: str, *, application_name: str = "reverse_etl") -> psycopg.Connection:
    """Open a logical replication connection (walsender) with the pinned session settings."""
    parse_dsn(dsn)  # a malformed DSN is a ConfigError; libpq's own message would quote it
    return psycopg.connect(
        dsn,
        replication="database",
        autocommit=True,
        application_name=application_name,
        options=SESSION_OPTIONS,
    )


def connect_session(dsn: str, *, application_name: str = "reverse_etl") -> psycopg.Connection:
    """Open an ordinary connection with the pinned session settings (not in autocommit)."""
    parse_dsn(dsn)
    return psycopg.connect(dsn, application_name=application_name, options=SESSION_OPTIONS)
