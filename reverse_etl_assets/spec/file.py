"""The spec file as a whole: read the YAML, check its top level, parse both blocks, and refuse
names used twice or two things landing in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.settings import ENV_LAKE_ROOT
from reverse_etl_assets.spec.lakehouse_syncs import (
    LakehouseSync,
    check_locations,
    parse_lakehouse_sync,
)
from reverse_etl_assets.spec.synced_tables import SyncedTable, check_targets, parse_synced_table

TOP_KEYS = frozenset({"lake_root", "synced_tables", "lakehouse_syncs"})


@dataclass(frozen=True, kw_only=True)
class Spec:
    """The whole spec file."""

    path: Path
    lake_root: str
    synced_tables: tuple[SyncedTable, ...]
    lakehouse_syncs: tuple[LakehouseSync, ...] = ()

    def table(self, name: str) -> SyncedTable:
        """The synced table called `name`, or a SpecError listing the declared ones."""
        for table in self.synced_tables:
            if table.name == name:
                return table
        raise SpecError(f"no synced table named {name!r} in {self.path} ({self._declared()})")

    def lakehouse_sync(self, name: str) -> LakehouseSync | None:
        """The lakehouse sync called `name`, None when there is none."""
        return next((s for s in self.lakehouse_syncs if s.name == name), None)

    def _declared(self) -> str:
        names = [t.name for t in self.synced_tables] + [s.name for s in self.lakehouse_syncs]
        return "declared: " + (", ".join(names) or "none")


def load_spec(path: Path) -> Spec:
    """Read and check the spec file; every problem is a SpecError naming table and field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise SpecError(
            f"spec file {path} not found: create it or point REVERSE_ETL_SPEC at yours"
        ) from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"spec file {path} is not valid YAML: {exc}") from exc
    return parse_spec(raw, path=path)


def parse_spec(raw: Any, *, path: Path) -> Spec:
    """Check an already-loaded YAML document and build the Spec."""
    if not isinstance(raw, dict):
        raise SpecError(
            f"{path}: the spec must be a mapping with a `synced_tables` or `lakehouse_syncs` list"
        )
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise SpecError(f"{path}: unknown top-level key(s) {unknown}; allowed: {sorted(TOP_KEYS)}")
    lake_root = _resolve_lake_root(raw.get("lake_root"), path)
    table_entries = _entries(raw, "synced_tables", path)
    sync_entries = _entries(raw, "lakehouse_syncs", path)
    if not table_entries and not sync_entries:
        raise SpecError(
            f"{path}: declare at least one synced table (`synced_tables`) or lakehouse sync "
            "(`lakehouse_syncs`)"
        )
    tables = tuple(
        parse_synced_table(entry, i, lake_root=lake_root, path=path)
        for i, entry in enumerate(table_entries)
    )
    syncs = tuple(
        parse_lakehouse_sync(entry, i, lake_root=lake_root, path=path)
        for i, entry in enumerate(sync_entries)
    )
    seen: set[str] = set()
    for name in [t.name for t in tables] + [s.name for s in syncs]:
        if name.lower() in seen:
            raise SpecError(f"{path}: the name {name!r} is declared twice; names must be unique")
        seen.add(name.lower())
    check_targets(tables, path)
    check_locations(syncs, path)
    return Spec(path=path, lake_root=lake_root, synced_tables=tables, lakehouse_syncs=syncs)


def _entries(raw: dict[str, Any], key: str, path: Path) -> list[Any]:
    entries = raw.get(key)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise SpecError(f"{path}: `{key}` must be a list")
    return entries


def _resolve_lake_root(value: Any, path: Path) -> str:
    root = os.environ.get(ENV_LAKE_ROOT) or value or "data/lake"
    if not isinstance(root, str):
        raise SpecError(f"{path}: `lake_root` must be a path or URI string, got {root!r}")
    if "://" in root or Path(root).is_absolute():
        return root
    return str((path.parent / root).resolve())
