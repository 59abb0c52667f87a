"""The `synced_tables:` block of the spec: Delta tables kept in Postgres, validated.

Only the shape is checked here; the pipelines' preflight checks each source against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.postgres import names
from reverse_etl_assets.postgres.state import STATE_SCHEMA
from reverse_etl_assets.spec.fields import (
    NAME_PART,
    check_cron,
    join_location,
    name_list,
    number,
    storage_options,
)

Mode = Literal["snapshot", "triggered", "continuous"]
InvalidCharacters = Literal["fail", "strip"]

MODES: tuple[str, ...] = ("snapshot", "triggered", "continuous")
THREE_PART = re.compile(r"^[A-Za-z0-9_]+\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+$")
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
    # Unset: the sync takes whichever path (increment or snapshot swap) is estimated cheaper
    # from the measured cost; set: above this share of rows changed, a snapshot swap.
    full_refresh_threshold: float | None = None
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


def check_targets(tables: tuple[SyncedTable, ...], path: Path) -> None:
    """Each synced table lands in a Postgres table of its own, and none lands on a table another
    one builds or retires during its swap: two names for one table would overwrite each other
    (and their locks, taken by name, would not exclude each other)."""
    owners: dict[tuple[str, str], SyncedTable] = {}
    for table in tables:
        target = (table.pg_schema, table.pg_table)
        other = owners.get(target)
        if other is not None:
            raise SpecError(
                f"{path}: synced tables {other.name!r} and {table.name!r} both land in the "
                f'Postgres table "{table.pg_schema}"."{table.pg_table}" (the catalog part is '
                "not part of the Postgres name); rename one of them"
            )
        owners[target] = table
    for table in tables:
        for derived in (names.staging_table(table.pg_table), names.retired_table(table.pg_table)):
            other = owners.get((table.pg_schema, derived))
            if other is not None:
                raise SpecError(
                    f"{path}: synced table {other.name!r} lands in "
                    f'"{other.pg_schema}"."{other.pg_table}", the name synced table '
                    f"{table.name!r} uses for its table during a full refresh; rename one of them"
                )


def resolve_source(source: str, *, lake_root: str, base_dir: Path) -> str:
    """A source as written in the spec -> the URI or absolute path delta-rs opens."""
    if "://" in source:
        return source
    if THREE_PART.match(source):
        catalog, schema, table = source.split(".")
        return join_location(lake_root, catalog, schema, table)
    candidate = Path(source)
    return str(candidate if candidate.is_absolute() else (base_dir / candidate).resolve())


def parse_synced_table(entry: Any, index: int, *, lake_root: str, path: Path) -> SyncedTable:
    """One entry of `synced_tables`, checked; every problem names the table and the field."""
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
    if name.split(".")[1] == STATE_SCHEMA:
        raise SpecError(
            f"{where}: `name` puts the table in schema {STATE_SCHEMA!r}, where the pipeline keeps "
            f"its own state (reverse_etl.synced_tables); choose another schema (the name's "
            "second part)"
        )

    source = entry.get("source")
    if not isinstance(source, str) or not source.strip():
        raise SpecError(
            f"{where}: `source` is required: a three-part name under lake_root "
            "(catalog.schema.table) or a path / URI of a Delta table"
        )
    mode = entry.get("mode", "snapshot")
    if mode not in MODES:
        raise SpecError(f"{where}: `mode` must be one of {list(MODES)}, got {mode!r}")
    primary_key = name_list(entry.get("primary_key"), where, "primary_key", required=True)
    indexes_raw = entry.get("indexes") or []
    if not isinstance(indexes_raw, list):
        raise SpecError(f"{where}: `indexes` must be a list of column lists, e.g. [[email]]")
    indexes = tuple(
        name_list(ix, where, f"indexes[{i}]", required=True) for i, ix in enumerate(indexes_raw)
    )
    timeseries_key = entry.get("timeseries_key")
    if timeseries_key is not None and (not isinstance(timeseries_key, str) or not timeseries_key):
        raise SpecError(f"{where}: `timeseries_key` must be one column name")
    if timeseries_key in primary_key:
        raise SpecError(f"{where}: `timeseries_key` {timeseries_key!r} cannot be a key column")
    schedule = entry.get("schedule")
    if schedule is not None:
        check_cron(schedule, where)
        if mode == "continuous":
            raise SpecError(f"{where}: `schedule` applies to snapshot and triggered tables only")
    on_invalid = entry.get("on_invalid_characters", "fail")
    if on_invalid not in ("fail", "strip"):
        raise SpecError(
            f"{where}: `on_invalid_characters` must be fail or strip, got {on_invalid!r}"
        )
    threshold: float | None = None
    if entry.get("full_refresh_threshold") is not None:
        threshold = number(entry, "full_refresh_threshold", 0.0, where)
        if not 0 <= threshold <= 1:
            raise SpecError(f"{where}: `full_refresh_threshold` must be between 0 and 1")
    poll = number(entry, "poll_interval_seconds", 1.0, where)
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
    readers = name_list(entry.get("readers"), where, "readers", required=False)
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
        storage_options=storage_options(entry, where),
    )
