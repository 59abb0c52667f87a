"""Sync one synced table now: the single entry point the CLI and the Dagster asset call.

Every mode starts from a full snapshot; incremental modes then follow the Change Data Feed.
"""

from __future__ import annotations

from reverse_etl_assets.spec import SyncedTable
from reverse_etl_assets.sync.snapshot import Progress, SyncResult, sync_snapshot


def sync_table(
    table: SyncedTable, dsn: str, *, full_refresh: bool = False, on_progress: Progress | None = None
) -> SyncResult:
    """Bring the Postgres table to the source's latest version."""
    reason = "full refresh requested" if full_refresh else ""
    return sync_snapshot(table, dsn, reason=reason, on_progress=on_progress)
