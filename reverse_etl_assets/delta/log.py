"""Read the Delta transaction log's commit files for a version range, without reading data.

Tells which versions exist, which change data, and every schema / property change in between.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake.fs import DeltaStorageHandler

from reverse_etl_assets.errors import TransientError

LOG_DIR = "_delta_log"


class RangeUnavailable(Exception):
    """The commits of a version range cannot all be read (expired log, recreated table...)."""


@dataclass(frozen=True, kw_only=True)
class Commit:
    """One Delta commit, summarized."""

    version: int
    timestamp_ms: int | None
    operation: str
    data_change: bool
    metadata: dict[str, Any] | None = field(default=None, hash=False)

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


def _summarize(version: int, text: str) -> Commit:
    timestamp: int | None = None
    operation = ""
    data_change = False
    metadata: dict[str, Any] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        if "commitInfo" in action:
            info = action["commitInfo"]
            timestamp = info.get("timestamp")
            operation = info.get("operation", "")
        elif "metaData" in action:
            metadata = action["metaData"]
        elif "cdc" in action:
            data_change = True
        else:
            for kind in ("add", "remove"):
                if kind in action and action[kind].get("dataChange", True):
                    data_change = True
    return Commit(
        version=version,
        timestamp_ms=timestamp,
        operation=operation,
        data_change=data_change,
        metadata=metadata,
    )
