"""Postgres object names the pipeline derives (staging tables, indexes), kept under 63 bytes.

Postgres silently truncates longer names, which can alias another object; we shorten with a hash.
"""

from __future__ import annotations

import hashlib

MAX_NAME_BYTES = 63


def fit_name(*parts: str) -> str:
    """Join `parts` with '_' into a name of at most 63 bytes (truncated + hash when longer)."""
    name = "_".join(parts)
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    head = name.encode()[: MAX_NAME_BYTES - 9].decode(errors="ignore")
    return f"{head}_{digest}"


def staging_table(table: str) -> str:
    """The index-free table a snapshot loads into before the swap."""
    return fit_name(table, "_retl_new")


def retired_table(table: str) -> str:
    """The name the live table takes for the instant of the swap."""
    return fit_name(table, "_retl_old")


def primary_key_name(table: str) -> str:
    """The primary-key constraint (and index) of a synced table."""
    return fit_name(table, "pkey")


def index_name(table: str, columns: tuple[str, ...]) -> str:
    """A secondary index of a synced table, named after its columns."""
    return fit_name(table, *columns, "idx")
