"""Where things are: the spec file, the lake root and the Postgres DSN, from env vars or defaults.

Unset `REVERSE_ETL_PG_DSN` is an error, except in development (`REVERSE_ETL_DEV=1`, set by
`make demo`, `make dev` and the tests), where it means the embedded cluster under `data/postgres`.
"""

from __future__ import annotations

import os
from pathlib import Path

from reverse_etl_assets.errors import ConfigError

ENV_SPEC = "REVERSE_ETL_SPEC"
ENV_LAKE_ROOT = "REVERSE_ETL_LAKE_ROOT"
ENV_PG_DSN = "REVERSE_ETL_PG_DSN"
ENV_DEV = "REVERSE_ETL_DEV"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = PROJECT_ROOT / "synced_tables.yaml"
EMBEDDED_PG_DIR = PROJECT_ROOT / "data" / "postgres"


def spec_path() -> Path:
    """The spec file: `REVERSE_ETL_SPEC`, else the demo spec at the project root."""
    return Path(os.environ.get(ENV_SPEC) or DEFAULT_SPEC)


def pg_dsn() -> str:
    """The target Postgres: `REVERSE_ETL_PG_DSN`; in development only, the embedded cluster
    (started on demand). A production process never starts a database by surprise."""
    dsn = os.environ.get(ENV_PG_DSN)
    if dsn:
        return dsn
    if os.environ.get(ENV_DEV) != "1":
        raise ConfigError(
            f"{ENV_PG_DSN} is not set: point it at your Postgres "
            "(e.g. postgresql://pipeline@db.example.com/app). For the embedded development "
            f"cluster under data/postgres (what `make demo` and `make dev` use), set {ENV_DEV}=1"
        )
    from reverse_etl_assets.dev.embedded_postgres import ensure_running

    return ensure_running(EMBEDDED_PG_DIR)
