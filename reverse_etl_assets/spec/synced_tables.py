"""The spec file (one YAML of synced tables) parsed into frozen dataclasses and checked.

Only the shape is checked here; the pipelines' preflight checks each source against it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.settings import ENV_LAKE_ROOT

Mode = Literal["snapshot", "triggered", "continuous"]
InvalidCharacters = Literal["fail", "strip"]

MODES: tuple[str, ...] = ("snapshot", "triggered", "continuous")
NAME_PART = re.compile(r"^[A-Za-z0-9_]+$")
THREE_PART = re.compile(r"^[A-Za-z0-9_]+\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+$")
TOP_KEYS = frozenset({"lake_root", "synced_tables"})
TABLE_KEYS = frozenset(
    {
        "name",
        "source",
        "primary_key",
        "mode",
        "schedule",
        "on_source_change",
        "poll_interval_seconds",
        "timeseries_key",
        "indexes",
        "on_invalid_characters",
        "full_refresh_threshold",
        "max_connections",
        "readers",
        "storage_options",
    }
)


@dataclass(frozen=True, kw_only=True)
class SyncedTable:
    """One synced table: a Postgres table kept equal to a Delta source."""

    name: str
    source: str
    source_uri: str
    primary_key: tuple[str, ...]
    mode: Mode = "snapshot"
    schedule: str | None = None
    on_source_change: bool = False
    poll_interval_seconds: float = 1.0
    timeseries_key: str | None = None
    indexes: tuple[tuple[str, ...], ...] = ()
    on_invalid_characters: InvalidCharacters = "fail"
    full_refresh_threshold: float = 0.1
    max_connections: int = 4
    readers: tuple[str, ...] = ()
    storage_options: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def pg_schema(self) -> str:
        """The Postgres schema of the synced table (the name's second part)."""
        return self.name.split(".")[1]

    @property
    def pg_table(self) -> str:
        """The Postgres table name (the name's third part)."""
        return self.name.split(".")[2]

    @property
    def asset_key_path(self) -> list[str]:
        """The Dagster asset key: the name split on dots."""
        return self.name.split(".")


@dataclass(frozen=True, kw_only=True)
class Spec:
    """The whole spec file."""

    path: Path
    lake_root: str
    synced_tables: tuple[SyncedTable, ...]

    def table(self, name: str) -> SyncedTable:
        """The synced table called `name`, or a SpecError listing the declared ones."""
        for table in self.synced_tables:
            if table.name == name:
                return table
        declared = ", ".join(t.name for t in self.synced_tables) or "none"
        raise SpecError(f"no synced table named {name!r} in {self.path} (declared: {declared})")


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
        raise SpecError(f"{path}: the spec must be a mapping with a `synced_tables` list")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise SpecError(f"{path}: unknown top-level key(s) {unknown}; allowed: {sorted(TOP_KEYS)}")
    lake_root = _resolve_lake_root(raw.get("lake_root"), path)
    entries = raw.get("synced_tables")
    if not isinstance(entries, list) or not entries:
        raise SpecError(f"{path}: `synced_tables` must be a non-empty list of synced tables")
    tables = tuple(_parse_table(entry, i, lake_root, path) for i, entry in enumerate(entries))
    seen: set[str] = set()
    for table in tables:
        key = table.name.lower()
        if key in seen:
            raise SpecError(f"{path}: synced table {table.name!r} is declared twice")
        seen.add(key)
    return Spec(path=path, lake_root=lake_root, synced_tables=tables)


def resolve_source(source: str, *, lake_root: str, base_dir: Path) -> str:
    """A source as written in the spec -> the URI or absolute path delta-rs opens."""
    if "://" in source:
        return source
    if THREE_PART.match(source):
        catalog, schema, table = source.split(".")
        return _join(lake_root, catalog, schema, table)
    candidate = Path(source)
    return str(candidate if candidate.is_absolute() else (base_dir / candidate).resolve())


def _join(root: str, *parts: str) -> str:
    if "://" in root:
        return "/".join([root.rstrip("/"), *parts])
    return str(Path(root).joinpath(*parts))


def _resolve_lake_root(value: Any, path: Path) -> str:
    root = os.environ.get(ENV_LAKE_ROOT) or value or "data/lake"
    if not isinstance(root, str):
        raise SpecError(f"{path}: `lake_root` must be a path or URI string, got {root!r}")
    if "://" in root or Path(root).is_absolute():
        return root
    return str((path.parent / root).resolve())


def _parse_table(entry: Any, index: int, lake_root: str, path: Path) -> SyncedTable:
    where = f"{path}: synced_tables[{index}]"
    if not isinstance(entry, dict):
        raise SpecError(f"{where} must be a mapping with at least name, source and primary_key")
    name = entry.get("name")
    if not isinstance(name, str) or len(name.split(".")) != 3:
        raise SpecError(
            f"{where}: `name` must be <catalog>.<schema>.<table>, got {name!r} "
            "(e.g. lakebase.gold.user_profiles_synced)"
        )
    where = f"synced table {name!r}"
    for part in name.split("."):
        if not NAME_PART.match(part):
            raise SpecError(f"{where}: each part of `name` must match [A-Za-z0-9_]+, got {part!r}")
        if len(part.encode()) > 40:
            raise SpecError(
                f"{where}: `name` part {part!r} is longer than 40 bytes; Postgres truncates "
                "names at 63 bytes and the pipeline needs room for its own suffixes"
            )
    unknown = sorted(set(entry) - TABLE_KEYS)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(TABLE_KEYS)}")

    source = entry.get("source")
    if not isinstance(source, str) or not source.strip():
        raise SpecError(
            f"{where}: `source` is required: a three-part name under lake_root "
            "(catalog.schema.table) or a path / URI of a Delta table"
        )
    mode = entry.get("mode", "snapshot")
    if mode not in MODES:
        raise SpecError(f"{where}: `mode` must be one of {list(MODES)}, got {mode!r}")
    primary_key = _name_list(entry.get("primary_key"), where, "primary_key", required=True)
    indexes_raw = entry.get("indexes") or []
    if not isinstance(indexes_raw, list):
        raise SpecError(f"{where}: `indexes` must be a list of column lists, e.g. [[email]]")
    indexes = tuple(
        _name_list(ix, where, f"indexes[{i}]", required=True) for i, ix in enumerate(indexes_raw)
    )
    timeseries_key = entry.get("timeseries_key")
    if timeseries_key is not None and (not isinstance(timeseries_key, str) or not timeseries_key):
        raise SpecError(f"{where}: `timeseries_key` must be one column name")
    if timeseries_key in primary_key:
        raise SpecError(f"{where}: `timeseries_key` {timeseries_key!r} cannot be a key column")
    schedule = entry.get("schedule")
    if schedule is not None:
        _check_cron(schedule, where)
        if mode == "continuous":
            raise SpecError(f"{where}: `schedule` applies to snapshot and triggered tables only")
    on_invalid = entry.get("on_invalid_characters", "fail")
    if on_invalid not in ("fail", "strip"):
        raise SpecError(
            f"{where}: `on_invalid_characters` must be fail or strip, got {on_invalid!r}"
        )
    threshold = _number(entry, "full_refresh_threshold", 0.1, where)
    if not 0 <= threshold <= 1:
        raise SpecError(f"{where}: `full_refresh_threshold` must be between 0 and 1")
    poll = _number(entry, "poll_interval_seconds", 1.0, where)
    if poll <= 0:
        raise SpecError(f"{where}: `poll_interval_seconds` must be positive")
    max_connections = entry.get("max_connections", 4)
    if (
        not isinstance(max_connections, int)
        or isinstance(max_connections, bool)
        or not 1 <= max_connections <= 16
    ):
        raise SpecError(f"{where}: `max_connections` must be an integer from 1 to 16")
    on_source_change = entry.get("on_source_change", False)
    if not isinstance(on_source_change, bool):
        raise SpecError(f"{where}: `on_source_change` must be true or false")
    readers = _name_list(entry.get("readers"), where, "readers", required=False)
    storage_options = entry.get("storage_options") or {}
    if not isinstance(storage_options, dict) or not all(
        isinstance(k, str) for k in storage_options
    ):
        raise SpecError(f"{where}: `storage_options` must be a mapping of option names to values")
    return SyncedTable(
        name=name,
        source=source,
        source_uri=resolve_source(source, lake_root=lake_root, base_dir=path.parent),
        primary_key=primary_key,
        mode=mode,
        schedule=schedule,
        on_source_change=on_source_change,
        poll_interval_seconds=poll,
        timeseries_key=timeseries_key,
        indexes=indexes,
        on_invalid_characters=on_invalid,
        full_refresh_threshold=threshold,
        max_connections=max_connections,
        readers=readers,
        storage_options={k: str(v) for k, v in storage_options.items()},
    )


def _name_list(value: Any, where: str, key: str, *, required: bool) -> tuple[str, ...]:
    if value is None or value == []:
        if required:
            raise SpecError(
                f"{where}: `{key}` is required: a list of column names, e.g. {key}: [user_id]"
            )
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{where}: `{key}` must be a list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise SpecError(f"{where}: `{key}` names a column twice: {value!r}")
    return tuple(value)


def _number(entry: dict[str, Any], key: str, default: float, where: str) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{where}: `{key}` must be a number, got {value!r}")
    return float(value)


def _check_cron(schedule: Any, where: str) -> None:
    fields = schedule.split() if isinstance(schedule, str) else []
    if len(fields) != 5 or not all(re.fullmatch(r"[0-9*/,\-A-Za-z?]+", f) for f in fields):
        raise SpecError(
            f'{where}: `schedule` must be a 5-field cron string like "0 * * * *", got {schedule!r}'
        )
