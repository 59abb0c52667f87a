"""Synced tables between Delta Lake and PostgreSQL, run as a Dagster code location.

Connectors per system (`delta/`, `postgres/`), `schema/`, `transform/`, `runtime/` and
`pipelines/` (one package per direction) know nothing of Dagster; `orchestration/` is the Dagster
shell. `defs` (the `@dg.definitions` of `definitions.py`) is imported when Dagster asks for it,
so the CLI does not import Dagster.
"""

from typing import Any

__all__ = ["defs"]


def __getattr__(name: str) -> Any:
    if name == "defs":
        from reverse_etl_assets.definitions import defs

        return defs
    raise AttributeError(name)


def __dir__() -> list[str]:
    return sorted({*globals(), "defs"})
