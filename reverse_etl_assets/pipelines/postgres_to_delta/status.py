"""The status of a lakehouse sync (DESIGN §7): its stored state, the slot as the server sees it,
and per table its Delta locations, rows and the LSN each holds."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError

from reverse_etl_assets.delta import writer
from reverse_etl_assets.errors import ReverseEtlError
from reverse_etl_assets.pipelines.postgres_to_delta import states
from reverse_etl_assets.pipelines.postgres_to_delta.run import source_dsn
from reverse_etl_assets.pipelines.postgres_to_delta.stream import app_id
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.lakehouse_state import LakehouseState, read_lakehouse_state
from reverse_etl_assets.postgres.replication import slot as slots
from reverse_etl_assets.postgres.replication.lsn import format_lsn
from reverse_etl_assets.spec import LakehouseSync

# A follower whose heartbeat is older than this is not running.
FOLLOWER_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, kw_only=True)
class LakehouseTableStatus:
    """One Postgres table of a lakehouse sync."""

    table: str
    history: str | None
    mirror: str | None
    rows: int | None
    last_lsn: str | None
    detailed_state: str
    message: str


@dataclass(frozen=True, kw_only=True)
class LakehouseStatus:
    """One lakehouse sync's row of `reverse-etl status`."""

    name: str
    mode: str
    detailed_state: str
    message: str
    slot: str
    last_lsn: str | None
    lag_bytes: int | None
    retained_wal_bytes: int | None
    lag_seconds: float | None
    last_sync_time: datetime | None
    tables: list[LakehouseTableStatus] = field(default_factory=list)
    kind: str = "lakehouse_sync"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO 8601 strings)."""
        data = asdict(self)
        if self.last_sync_time is not None:
            data["last_sync_time"] = self.last_sync_time.isoformat()
        return data


def lakehouse_status(
    sync: LakehouseSync, stored: LakehouseState | None, source: psycopg.Connection | None
) -> LakehouseStatus:
    """Status of `sync` from its state row and (when reachable) the source server."""
    info = None
    message = stored.message if stored is not None else ""
    if source is not None:
        try:
            info = slots.slot_info(source, sync.slot)
        except psycopg.Error as exc:
            message = message or f"cannot read the slot: {exc}"
    detailed = _detailed_state(sync, stored, info)
    if info is not None and info.invalidated:
        message = (
            f"slot {sync.slot} was invalidated by the server (wal_status lost); run "
            f"`reverse-etl sync {sync.name} --full-refresh`"
        )
    elif stored is not None and stored.last_lsn is not None and info is None and source:
        message = f"slot {sync.slot} is missing; run `reverse-etl sync {sync.name} --full-refresh`"
    last = stored.last_lsn if stored is not None else None
    lag_bytes = None
    if info is not None and info.confirmed_flush_lsn is not None:
        lag_bytes = max(info.current_wal_lsn - info.confirmed_flush_lsn, 0)
    lag_seconds = None
    if stored is not None and stored.last_commit_time is not None and lag_bytes:
        lag_seconds = (datetime.now(UTC) - stored.last_commit_time).total_seconds()
    elif lag_bytes == 0:
        lag_seconds = 0.0
    failed = stored.failed_tables if stored is not None else {}
    return LakehouseStatus(
        name=sync.name,
        mode=sync.mode,
        detailed_state=detailed,
        message=message,
        slot=sync.slot,
        last_lsn=format_lsn(last) if last is not None else None,
        lag_bytes=lag_bytes,
        retained_wal_bytes=info.retained_wal_bytes if info is not None else None,
        lag_seconds=lag_seconds,
        last_sync_time=stored.last_sync_time if stored is not None else None,
        tables=[
            _table_status(sync, schema, table, failed) for schema, table in _tables(sync, source)
        ],
    )


def read_lakehouse_status(sync: LakehouseSync, dsn: str) -> LakehouseStatus:
    """`lakehouse_status` from the state in the pipeline's Postgres (`dsn`) and the sync's
    source server, which may be another one (`source_dsn_env`; left out when unreachable)."""
    with connect(dsn, autocommit=True) as conn:
        stored = read_lakehouse_state(conn, sync.name)
        source = source_dsn(sync, dsn)
        if source == dsn:
            return lakehouse_status(sync, stored, conn)
    try:
        with connect(source, autocommit=True) as other:
            return lakehouse_status(sync, stored, other)
    except ReverseEtlError:
        return lakehouse_status(sync, stored, None)


def _detailed_state(
    sync: LakehouseSync, stored: LakehouseState | None, info: slots.SlotInfo | None
) -> str:
    if stored is None:
        return states.OFFLINE
    if info is not None and info.invalidated:
        return (
            states.ONLINE_PIPELINE_FAILED if stored.last_lsn is not None else states.OFFLINE_FAILED
        )
    if stored.state in (states.ONLINE_PIPELINE_FAILED, states.OFFLINE_FAILED):
        return stored.state
    running = (
        stored.heartbeat_at is not None
        and stored.read_at is not None
        and (stored.read_at - stored.heartbeat_at).total_seconds() < FOLLOWER_TIMEOUT_SECONDS
    )
    if running:
        return states.ONLINE_CONTINUOUS_UPDATE
    if stored.state == states.ONLINE_CONTINUOUS_UPDATE:
        return states.ONLINE_NO_PENDING_UPDATE
    return stored.state


def _tables(sync: LakehouseSync, source: psycopg.Connection | None) -> list[tuple[str, str]]:
    tables = list(sync.tables)
    if source is not None and sync.schemas:
        with contextlib.suppress(psycopg.Error):  # status still shows the named tables
            tables += [
                t for t in slots.published_tables(source, sync.publication) if t not in tables
            ]
    return tables


def _table_status(
    sync: LakehouseSync, schema: str, table: str, failed: dict[str, str]
) -> LakehouseTableStatus:
    label = f"{schema}.{table}"
    history = sync.history_uri(table) if sync.history else None
    mirror = sync.mirror_uri(table) if sync.mirror else None
    rows = None
    versions = []
    message = failed.get(label, "")
    for uri in (history, mirror):
        if uri is None:
            continue
        try:
            version = writer.transaction_version(
                uri, app_id(sync), storage_options=sync.storage_options
            )
        except ReverseEtlError as exc:
            message = message or str(exc)
            continue
        if version is not None:
            versions.append(version)
    if mirror is not None:
        try:
            table_ = DeltaTable(mirror, storage_options=sync.storage_options)
            rows = table_.to_pyarrow_dataset().count_rows()  # from Parquet footers only
        except (TableNotFoundError, DeltaError, OSError):
            rows = None  # not written yet (a table without a key has no mirror)
    if label in failed:
        detailed = states.ONLINE_PIPELINE_FAILED if versions else states.OFFLINE_FAILED
    elif versions:
        detailed = states.ONLINE_NO_PENDING_UPDATE
    else:
        detailed = states.OFFLINE
    return LakehouseTableStatus(
        table=label,
        history=history,
        mirror=mirror,
        rows=rows,
        last_lsn=format_lsn(min(versions)) if versions else None,
        detailed_state=detailed,
        message=message,
    )
