"""The status of synced tables (DESIGN §7): stored state joined with the source's live version.

Pure assembly over what `postgres.state` and `delta.reader` return; the CLI and Dagster print it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from reverse_etl_assets.delta.reader import open_source
from reverse_etl_assets.errors import ReverseEtlError
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.pipelines.delta_to_postgres.follow import follower_timeout
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.state import TableState, read_state
from reverse_etl_assets.spec import SyncedTable


@dataclass(frozen=True, kw_only=True)
class TableStatus:
    """One row of `reverse-etl status`."""

    name: str
    mode: str
    detailed_state: str
    message: str
    source: str
    source_version: int | None
    last_synced_version: int | None
    last_sync_time: datetime | None
    rows: int | None
    lag_versions: int | None
    lag_seconds: float | None
    skipped_null_keys: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO 8601 strings)."""
        data = {"kind": "synced_table", **asdict(self)}
        if self.last_sync_time is not None:
            data["last_sync_time"] = self.last_sync_time.isoformat()
        return data


def table_status(table: SyncedTable, stored: TableState | None) -> TableStatus:
    """Status of `table` from its stored state and its source's current version."""
    source_version: int | None = None
    source_error = ""
    commit_times: dict[int, datetime] = {}
    try:
        source = open_source(table.source_uri, storage_options=table.storage_options)
        source_version = source.version
        if stored is not None and stored.last_synced_version is not None:
            pending = source_version - stored.last_synced_version
            if pending > 0:
                for entry in source.table.history(limit=pending):
                    commit_times[int(entry["version"])] = datetime.fromtimestamp(
                        entry["timestamp"] / 1000, tz=UTC
                    )
    except ReverseEtlError as exc:
        source_error = f"source unreadable: {exc}"
    synced = stored.last_synced_version if stored is not None else None
    lag = None if source_version is None or synced is None else max(source_version - synced, 0)
    lag_seconds = None
    if lag == 0:
        lag_seconds = 0.0
    elif lag and synced is not None and (first := commit_times.get(synced + 1)) is not None:
        lag_seconds = max((datetime.now(tz=UTC) - first).total_seconds(), 0.0)
    detailed, message = _detailed_state(table, stored, lag)
    return TableStatus(
        name=table.name,
        mode=table.mode,
        detailed_state=detailed,
        message="; ".join(m for m in (message, source_error) if m),
        source=table.source,
        source_version=source_version,
        last_synced_version=synced,
        last_sync_time=stored.last_sync_time if stored is not None else None,
        rows=stored.rows if stored is not None else None,
        lag_versions=lag,
        lag_seconds=lag_seconds,
        skipped_null_keys=stored.skipped_null_keys if stored is not None else 0,
    )


def _detailed_state(
    table: SyncedTable, stored: TableState | None, lag: int | None
) -> tuple[str, str]:
    if stored is None:
        return states.OFFLINE, "not synced yet: run `reverse-etl sync " + table.name + "`"
    if table.mode == "continuous":
        return _continuous_state(table, stored, lag)
    if stored.state == states.ONLINE_NO_PENDING_UPDATE and lag:
        return states.ONLINE_TRIGGERED_UPDATE, f"{lag} source version(s) not synced yet"
    return stored.state, stored.message


_FAILED = frozenset({states.ONLINE_PIPELINE_FAILED, states.OFFLINE_FAILED})


def _continuous_state(table: SyncedTable, stored: TableState, lag: int | None) -> tuple[str, str]:
    """A continuous table is as healthy as its follower: a fresh heartbeat means following, a
    stale one a follower that died (a clean stop clears it)."""
    if stored.heartbeat_at is None:
        if stored.state == states.ONLINE_NO_PENDING_UPDATE and lag:
            return states.ONLINE_CONTINUOUS_UPDATE, (
                f"{lag} source version(s) not synced yet; no follower is running: start it with "
                f"`reverse-etl follow {table.name}` or the Dagster sensor"
            )
        return stored.state, stored.message
    who = f"pid {stored.follower_pid} on {stored.follower_host}"
    age = ((stored.read_at or datetime.now(tz=UTC)) - stored.heartbeat_at).total_seconds()
    if age > follower_timeout(table):
        serving = stored.last_synced_version is not None
        failed = states.ONLINE_PIPELINE_FAILED if serving else states.OFFLINE_FAILED
        died = (
            f"the follower ({who}) died: no heartbeat for {age:.0f}s, since "
            f"{stored.heartbeat_at.isoformat(timespec='seconds')}"
        )
        if stored.message:
            label = "last error" if stored.state in _FAILED else "last message"
            died += f"; {label}: {stored.message}"
        return failed, died
    if stored.state in _FAILED:
        return stored.state, f"{stored.message} (the follower, {who}, keeps retrying)"
    if stored.state == states.PROVISIONING_INITIAL_SNAPSHOT:
        return stored.state, f"{stored.message} (by the follower, {who})"
    pending = f"{lag} version(s) pending" if lag else "up to date"
    return states.ONLINE_CONTINUOUS_UPDATE, f"following ({who}), {pending}"


def read_table_status(table: SyncedTable, dsn: str) -> TableStatus:
    """Status of `table` as stored in the target database now."""
    with connect(dsn, autocommit=True) as conn:
        return table_status(table, read_state(conn, table.name))
