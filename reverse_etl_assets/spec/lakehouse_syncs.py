"""The `lakehouse_syncs:` block of the spec: Postgres tables streamed into Delta, validated.

Only the shape is checked here; the server-side checks (tables, keys, wal_level) are preflight's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.spec.fields import (
    NAME_PART,
    check_cron,
    join_location,
    name_list,
    number,
    storage_options,
)

LakehouseMode = Literal["continuous", "triggered"]
LAKEHOUSE_MODES: tuple[str, ...] = ("continuous", "triggered")
LAKEHOUSE_KEYS = frozenset(
    {
        "name",
        "tables",
        "schemas",
        "target",
        "mode",
        "schedule",
        "history",
        "mirror",
        "flush_interval_seconds",
        "source_dsn_env",
        "storage_options",
    }
)
TWO_PART = re.compile(r"^[A-Za-z0-9_]+\.[A-Za-z0-9_]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SLOT_PREFIX = "reverse_etl_"
HISTORY_PREFIX = "lb_"
HISTORY_SUFFIX = "_history"
# Replication slot names are at most 63 bytes of [a-z0-9_].
MAX_NAME_BYTES = 63 - len(SLOT_PREFIX)


@dataclass(frozen=True, kw_only=True)
class LakehouseSync:
    """Postgres tables kept in Delta through one replication slot: a change log and a mirror."""

    name: str
    tables: tuple[tuple[str, str], ...]
    schemas: tuple[str, ...]
    target: str
    target_uri: str
    mode: LakehouseMode = "continuous"
    schedule: str | None = None
    history: bool = True
    mirror: bool = True
    flush_interval_seconds: float = 1.0
    source_dsn_env: str | None = None
    storage_options: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def slot(self) -> str:
        """The replication slot (and publication) name: `reverse_etl_<name>`, lower case."""
        return f"{SLOT_PREFIX}{self.name.lower()}"

    @property
    def publication(self) -> str:
        """The publication's name: the slot's."""
        return self.slot

    def history_uri(self, table: str) -> str:
        """Where the change log of Postgres table `table` lands: `lb_<table>_history`."""
        return join_location(self.target_uri, f"{HISTORY_PREFIX}{table}{HISTORY_SUFFIX}")

    def mirror_uri(self, table: str) -> str:
        """Where the current-state mirror of Postgres table `table` lands."""
        return join_location(self.target_uri, table)

    @property
    def target_parts(self) -> list[str]:
        """The target as asset-key parts: `<catalog>.<schema>` split, or `delta/<sanitized>`."""
        if TWO_PART.match(self.target):
            return self.target.split(".")
        return ["delta", re.sub(r"[^A-Za-z0-9_]+", "_", self.target).strip("_")]


def parse_lakehouse_sync(entry: Any, index: int, *, lake_root: str, path: Path) -> LakehouseSync:
    """One entry of `lakehouse_syncs`, checked; every problem names the sync and the field."""
    where = f"{path}: lakehouse_syncs[{index}]"
    if not isinstance(entry, dict):
        raise SpecError(
            f"{where} must be a mapping with at least name, tables (or schemas), target"
        )
    name = entry.get("name")
    if not isinstance(name, str) or not NAME_PART.match(name):
        raise SpecError(f"{where}: `name` must match [A-Za-z0-9_]+, got {name!r} (e.g. app_events)")
    where = f"lakehouse sync {name!r}"
    if len(name.encode()) > MAX_NAME_BYTES:
        raise SpecError(
            f"{where}: `name` is longer than {MAX_NAME_BYTES} bytes; the replication slot "
            f"{SLOT_PREFIX}<name> must fit Postgres' 63"
        )
    unknown = sorted(set(entry) - LAKEHOUSE_KEYS)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(LAKEHOUSE_KEYS)}")
    tables = _tables(entry.get("tables"), where)
    schemas = name_list(entry.get("schemas"), where, "schemas", required=False)
    for schema in schemas:
        if not NAME_PART.match(schema):
            raise SpecError(f"{where}: `schemas` entry {schema!r} must match [A-Za-z0-9_]+")
    if not tables and not schemas:
        raise SpecError(
            f"{where}: name what to stream: `tables: [public.orders]` (each <schema>.<table>) "
            "and / or `schemas: [app]` (every current and future table of the schema)"
        )
    target = entry.get("target")
    if not isinstance(target, str) or not target.strip():
        raise SpecError(
            f"{where}: `target` is required: <catalog>.<schema> under lake_root (e.g. bronze.app) "
            "or a path / URI of a folder"
        )
    mode = entry.get("mode", "continuous")
    if mode not in LAKEHOUSE_MODES:
        raise SpecError(f"{where}: `mode` must be one of {list(LAKEHOUSE_MODES)}, got {mode!r}")
    schedule = entry.get("schedule")
    if schedule is not None:
        check_cron(schedule, where)
        if mode == "continuous":
            raise SpecError(f"{where}: `schedule` applies to triggered lakehouse syncs only")
    history = _flag(entry, "history", where)
    mirror = _flag(entry, "mirror", where)
    if not history and not mirror:
        raise SpecError(f"{where}: `history` and `mirror` are both false: nothing would be written")
    flush = number(entry, "flush_interval_seconds", 1.0, where)
    if not 0 < flush <= 3600:
        raise SpecError(f"{where}: `flush_interval_seconds` must be more than 0 and at most 3600")
    dsn_env = entry.get("source_dsn_env")
    if dsn_env is not None and (not isinstance(dsn_env, str) or not ENV_NAME.match(dsn_env)):
        raise SpecError(
            f"{where}: `source_dsn_env` must be the name of an environment variable holding the "
            f"source DSN (e.g. APP_PG_DSN), got {dsn_env!r}"
        )
    return LakehouseSync(
        name=name,
        tables=tables,
        schemas=schemas,
        target=target,
        target_uri=_resolve_target(target, lake_root=lake_root, base_dir=path.parent),
        mode=mode,
        schedule=schedule,
        history=history,
        mirror=mirror,
        flush_interval_seconds=flush,
        source_dsn_env=dsn_env,
        storage_options=storage_options(entry, where),
    )


def check_locations(syncs: tuple[LakehouseSync, ...], path: Path) -> None:
    """No two Postgres tables (of one sync or of two) land at one Delta location, as far as the
    spec alone tells (tables found through `schemas` are checked again by preflight)."""
    owners: dict[str, str] = {}
    for sync in syncs:
        for schema, table in sync.tables:
            locations = []
            if sync.history:
                locations.append(sync.history_uri(table))
            if sync.mirror:
                locations.append(sync.mirror_uri(table))
            for location in locations:
                owner = f"{sync.name}: {schema}.{table}"
                if location in owners and owners[location] != owner:
                    raise SpecError(
                        f"{path}: lakehouse sync {sync.name!r}: {schema}.{table} and "
                        f"{owners[location]} would both land at {location}; give them different "
                        "`target`s"
                    )
                owners[location] = owner


def _tables(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    names = name_list(value, where, "tables", required=False)
    tables = []
    for qualified in names:
        if not TWO_PART.match(qualified):
            raise SpecError(
                f"{where}: `tables` entry {qualified!r} must be <schema>.<table> with each part "
                "matching [A-Za-z0-9_]+ (e.g. public.orders)"
            )
        schema, table = qualified.split(".")
        tables.append((schema, table))
    return tuple(tables)


def _flag(entry: dict[str, Any], key: str, where: str) -> bool:
    value = entry.get(key, True)
    if not isinstance(value, bool):
        raise SpecError(f"{where}: `{key}` must be true or false, got {value!r}")
    return value


def _resolve_target(target: str, *, lake_root: str, base_dir: Path) -> str:
    if "://" in target:
        return target.rstrip("/")
    if TWO_PART.match(target):
        return join_location(lake_root, *target.split("."))
    candidate = Path(target)
    return str(candidate if candidate.is_absolute() else (base_dir / candidate).resolve())
