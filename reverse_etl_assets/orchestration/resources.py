"""Dagster resource handing out the target Postgres DSN (embedded cluster when unset)."""

from __future__ import annotations

import dagster as dg

from reverse_etl_assets import settings


class PostgresTarget(dg.ConfigurableResource):
    """The Postgres database synced tables land in; empty `dsn` means REVERSE_ETL_PG_DSN or the
    embedded development cluster, started on first use.

    A DSN holding a password belongs in an environment variable (`dg.EnvVar(...)` or
    REVERSE_ETL_PG_DSN), not in code or run config, which Dagster shows in its UI.
    """

    dsn: str = ""

    def get_dsn(self) -> str:
        """The libpq URI to connect with."""
        return self.dsn or settings.pg_dsn()
