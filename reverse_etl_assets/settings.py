"""Where things are: the spec file, the lake root and the Postgres DSN, from env vars or defaults.

Unset `REVERSE_ETL_PG_DSN` means the embedded development cluster under `data/postgres`.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_SPEC = "REVERSE_ETL_SPEC"
ENV_LAKE_ROOT = "REVERSE_ETL_LAKE_ROOT"
ENV_PG_DSN = "REVERSE_ETL_PG_DSN"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = PROJECT_ROOT / "synced_tables.yaml"
EMBEDDED_PG_DIR = PROJECT_ROOT / "data" / "postgres"


def spec_path() -> Path:
    """The spec file: `REVERSE_ETL_SPEC`, else the demo spec at the project root."""
    return Path(os.environ.get(ENV_SPEC) or DEFAULT_SPEC)


def pg_dsn() -> str:
    """The target Postgres: `REVERSE_ETL_PG_DSN`, else the embedded cluster (started on demand)."""
    dsn = os.environ.get(ENV_PG_DSN)
    if dsn:
        return dsn
    from reverse_etl_assets.dev.embedded_postgres import ensure_running

    return ensure_running(EMBEDDED_PG_DIR)
