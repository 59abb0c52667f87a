"""Read the Delta transaction log's commit files for a version range, without reading data.

Tells which versions exist, which change data, and every schema / property change in between.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake.fs import DeltaStorageHandler

from reverse_etl_assets.errors import TransientError

LOG_DIR = "_delta_log"


class RangeUnavailable(Exception):
    """The commits of a version range cannot all be read (expired log, recreated table...)."""


@dataclass(frozen=True, kw_only=True)
class ChangeFile:
    """A file a version's change data is read from."""

    path: str  # relative to the table root (decoded), or an absolute URI
    partition_values: dict[str, str | None] = field(hash=False)
    # None: a change data (cdc) file, whose rows carry their change type; else the change type
    # of every row of a data file the version added ("insert") or removed ("delete").
    change_type: str | None


@dataclass(frozen=True, kw_only=True)
class Commit:
    """One Delta commit, summarized."""

    version: int
    timestamp_ms: int | None
    operation: str
    data_change: bool
    metadata: dict[str, Any] | None = field(default=None, hash=False)
    # Rows the commit inserted, updated or deleted, from its operation metrics (None when the
    # writer recorded none this code knows).
    changed_rows: int | None = None
    # Bytes of the data and change files it added or removed (dataChange only).
    changed_bytes: int = 0
    # Where its change data is: its cdc files when it has any, else the data files it added
    # (inserted rows) and removed (deleted rows).
    change_files: tuple[ChangeFile, ...] = ()
    # Its change data needs more than whole files (deletion vectors) or lives outside the table
    # (absolute paths): only a full Delta engine reads it.
    needs_engine: bool = False

    @property
    def cdf_enabled(self) -> bool | None:
        """The CDF property this commit sets (None when it does not touch the table metadata)."""
        if self.metadata is None:
            return None
        config = self.metadata.get("configuration") or {}
        return str(config.get("delta.enableChangeDataFeed", "false")).lower() == "true"


def commit_path(version: int) -> str:
    """The log file of a version, relative to the table root."""
    return f"{LOG_DIR}/{version:020d}.json"


def open_log(uri: str, *, storage_options: dict[str, str]) -> pafs.FileSystem:
    """A filesystem rooted at the table (local or object store), to read its log files."""
    return pafs.PyFileSystem(DeltaStorageHandler(uri, storage_options or None))


def commit_exists(log: pafs.FileSystem, version: int) -> bool:
    """Whether the commit of `version` is in the log: one metadata request, nothing read.

    What a follower polls: the next version exists once its commit file does.
    """
    try:
        info = log.get_file_info(commit_path(version))
    except (OSError, pa.ArrowException) as exc:
        raise TransientError(f"cannot read the Delta log: {exc}") from exc
    return bool(info.type == pafs.FileType.File)


def read_commits(
    uri: str, *, storage_options: dict[str, str], start: int, end: int
) -> list[Commit]:
    """The commits `start..end` (inclusive); RangeUnavailable when one is missing."""
    fs = open_log(uri, storage_options=storage_options)
    commits = []
    for version in range(start, end + 1):
        try:
            with fs.open_input_stream(commit_path(version)) as stream:
                text = stream.read().decode()
        except FileNotFoundError as exc:
            raise RangeUnavailable(
                f"the commit of version {version} is no longer in the Delta log "
                "(log retention expired it, or the table was recreated)"
            ) from exc
        except (OSError, pa.ArrowException) as exc:
            if "not found" in str(exc).lower():
                raise RangeUnavailable(
                    f"the commit of version {version} is no longer in the Delta log"
                ) from exc
            raise TransientError(f"cannot read the Delta log of {uri}: {exc}") from exc
        commits.append(_summarize(version, text))
    return commits


def estimate_changed_rows(commits: list[Commit], *, bytes_per_row: float) -> int:
    """An estimate (an upper bound, mostly) of the rows a range of commits changed, without
    reading data: the commits' operation metrics, else their files' bytes over `bytes_per_row`.

    A key changed in several commits counts once per commit, and an overwrite counts the rows it
    removed and the rows it wrote."""
    total = 0
    for commit in commits:
        if not commit.data_change:
            continue
        if commit.changed_rows is not None:
            total += commit.changed_rows
        else:
            total += round(commit.changed_bytes / max(bytes_per_row, 1.0))
    return total


# Operation metrics that count changed rows, as delta-rs (snake_case) and Spark (camelCase) name
# them, compared without underscores and case: UPDATE, DELETE, MERGE, and WRITE (appends).
_CHANGE_METRICS = (
    "numupdatedrows",
    "numdeletedrows",
    "numtargetrowsinserted",
    "numtargetrowsupdated",
    "numtargetrowsdeleted",
)
_WRITTEN_METRICS = ("numaddedrows", "numoutputrows")


def _changed_rows(metrics: dict[str, Any], *, removed_bytes: int, added_bytes: int) -> int | None:
    found = {k.replace("_", "").lower(): v for k, v in metrics.items()}
    try:
        changes = [int(found[name]) for name in _CHANGE_METRICS if name in found]
        if changes:
            return sum(changes)
        written = next((int(found[n]) for n in _WRITTEN_METRICS if n in found), None)
    except (TypeError, ValueError):
        return None
    if written is None:
        return None
    if removed_bytes:
        # An overwrite: it also removed the rows of the files it replaced, as many as their
        # bytes hold at the written files' density.
        if not added_bytes:
            return None
        written += round(written * removed_bytes / added_bytes)
    return written


def _summarize(version: int, text: str) -> Commit:
    timestamp: int | None = None
    operation = ""
    data_change = False
    metadata: dict[str, Any] | None = None
    metrics: dict[str, Any] = {}
    added = removed = cdc = 0
    cdc_files: list[ChangeFile] = []
    data_files: list[ChangeFile] = []
    needs_engine = False
    # Only "\n" ends an action: `splitlines` would also cut at U+2028, U+2029 or U+0085, which
    # JSON leaves unescaped inside strings (a string column's statistics can hold them).
    for line in text.split("\n"):
        if not line.strip():
            continue
        action = json.loads(line)
        if "commitInfo" in action:
            info = action["commitInfo"]
            timestamp = info.get("timestamp")
            operation = info.get("operation", "")
            metrics = info.get("operationMetrics") or {}
        elif "metaData" in action:
            metadata = action["metaData"]
        elif "cdc" in action:
            data_change = True
            cdc += int(action["cdc"].get("size") or 0)
            cdc_files.append(_change_file(action["cdc"], None))
        elif "add" in action and action["add"].get("dataChange", True):
            data_change = True
            added += int(action["add"].get("size") or 0)
            data_files.append(_change_file(action["add"], "insert"))
            needs_engine = needs_engine or bool(action["add"].get("deletionVector"))
        elif "remove" in action and action["remove"].get("dataChange", True):
            data_change = True
            removed += int(action["remove"].get("size") or 0)
            data_files.append(_change_file(action["remove"], "delete"))
            needs_engine = needs_engine or bool(action["remove"].get("deletionVector"))
    files = tuple(cdc_files) if cdc_files else tuple(data_files)
    needs_engine = (needs_engine and not cdc_files) or any("://" in f.path for f in files)
    return Commit(
        version=version,
        timestamp_ms=timestamp,
        operation=operation,
        data_change=data_change,
        metadata=metadata,
        changed_rows=_changed_rows(metrics, removed_bytes=removed, added_bytes=added)
        if data_change
        else 0,
        # With change files, they hold exactly the changed rows; else every file added or removed.
        changed_bytes=cdc or added + removed,
        change_files=files,
        needs_engine=needs_engine,
    )


def _change_file(action: dict[str, Any], change_type: str | None) -> ChangeFile:
    path = str(action["path"])
    return ChangeFile(
        path=path if "://" in path else unquote(path),
        partition_values=dict(action.get("partitionValues") or {}),
        change_type=change_type,
    )
