"""Checks of single spec fields shared by synced tables and lakehouse syncs: names, lists,
numbers, cron strings, storage options, and how a location joins under the lake root."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from reverse_etl_assets.errors import SpecError

NAME_PART = re.compile(r"^[A-Za-z0-9_]+$")


def name_list(value: Any, where: str, key: str, *, required: bool) -> tuple[str, ...]:
    """A list of distinct non-empty names (a lone string counts as one)."""
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
    twice = sorted({v for v in value if value.count(v) > 1})
    if twice:
        raise SpecError(f"{where}: `{key}` lists {twice[0]!r} twice: {value!r}")
    return tuple(value)


def number(entry: dict[str, Any], key: str, default: float, where: str) -> float:
    """A number field (not a boolean)."""
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{where}: `{key}` must be a number, got {value!r}")
    return float(value)


def check_cron(schedule: Any, where: str) -> None:
    """A 5-field cron string."""
    fields = schedule.split() if isinstance(schedule, str) else []
    if len(fields) != 5 or not all(re.fullmatch(r"[0-9*/,\-A-Za-z?]+", f) for f in fields):
        raise SpecError(
            f'{where}: `schedule` must be a 5-field cron string like "0 * * * *", got {schedule!r}'
        )


def storage_options(entry: dict[str, Any], where: str) -> dict[str, str]:
    """The delta-rs object-store options, as strings."""
    options = entry.get("storage_options") or {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise SpecError(f"{where}: `storage_options` must be a mapping of option names to values")
    return {k: str(v) for k, v in options.items()}


def join_location(root: str, *parts: str) -> str:
    """`parts` under a lake root that is a local path or a URI."""
    if "://" in root:
        return "/".join([root.rstrip("/"), *parts])
    return str(Path(root).joinpath(*parts))
