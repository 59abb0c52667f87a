"""Open psycopg connections to the target database with the settings every sync uses."""

from __future__ import annotations

import psycopg

from reverse_etl_assets.errors import TransientError

APPLICATION_NAME = "reverse_etl"


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection:
    """A new connection; an unreachable server is a TransientError (a retry may help).

    An `application_name` in the DSN is kept: the follower names its sessions with it.
    """
    name = psycopg.conninfo.conninfo_to_dict(dsn).get("application_name") or APPLICATION_NAME
    try:
        return psycopg.connect(dsn, autocommit=autocommit, application_name=name)
    except psycopg.OperationalError as exc:
        raise TransientError(f"cannot connect to Postgres ({_redact(dsn)}): {exc}".strip()) from exc


def _redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())
