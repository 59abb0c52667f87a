"""Synced tables between Delta Lake and PostgreSQL, run as a Dagster code location.

Connectors per system (`delta/`, `postgres/`), `schema/`, `transform/`, `runtime/` and
`pipelines/` (one package per direction) know nothing of Dagster; `orchestration/` is the Dagster
shell. `defs` is built from the spec when Dagster first asks for it, not at import.
"""

from typing import Any

__all__ = ["defs"]


def __getattr__(name: str) -> Any:
    # Dagster finds `defs` through dir()/getattr; loading it lazily keeps the CLI and core light.
    if name == "defs":
        from reverse_etl_assets.definitions import load_definitions

        globals()["defs"] = load_definitions()
        return globals()["defs"]
    raise AttributeError(name)


def __dir__() -> list[str]:
    return sorted({*globals(), "defs"})
