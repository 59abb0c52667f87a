"""What one sync of a synced table did, and the progress callback long loads report through.

Status, logs, the CLI and the Dagster metadata all read these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True, kw_only=True)
class SyncResult:
    """What one sync did, for status, logs and Dagster metadata."""

    name: str
    mode: str
    path: str
    version: int
    rows: int
    skipped_null_keys: int
    seconds: float
    changes: int = 0
    reason: str = ""
    # Seconds each path was estimated to take ("snapshot", "incremental"), when both were weighed.
    estimates: dict[str, float] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        """Rows landed per wall-clock second."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0
