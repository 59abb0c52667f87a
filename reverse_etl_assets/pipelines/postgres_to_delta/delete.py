"""`reverse-etl delete NAME [--drop-table]` for a lakehouse sync: drop its slot and publication
and forget its state; the Delta tables stay unless asked."""

from __future__ import annotations

import shutil
from pathlib import Path

from reverse_etl_assets.errors import ConfigError
from reverse_etl_assets.pipelines.postgres_to_delta.run import source_dsn
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.lakehouse_state import delete_lakehouse_state
from reverse_etl_assets.postgres.replication import slot as slots
from reverse_etl_assets.spec import LakehouseSync


def delete_lakehouse(sync: LakehouseSync, dsn: str, *, drop_tables: bool = False) -> str:
    """Stop `sync`: the slot (so the server keeps no WAL for it) and publication are dropped."""
    source = source_dsn(sync, dsn)
    with connect(source, autocommit=True) as conn:
        tables = sorted({t for t in slots.published_tables(conn, sync.publication)})
        had_slot = slots.slot_info(conn, sync.slot) is not None
        if had_slot:
            slots.drop_slot(conn, sync.slot)
        slots.drop_publication(conn, sync.publication)
    with connect(dsn, autocommit=True) as conn:
        forgot = delete_lakehouse_state(conn, sync.name)
    dropped = []
    if drop_tables:
        for _, table in sorted({*tables, *sync.tables}):
            for uri in (sync.history_uri(table), sync.mirror_uri(table)):
                dropped += _drop(uri)
    parts = [f"lakehouse sync {sync.name!r}:"]
    parts.append(f"slot {sync.slot} dropped" if had_slot else f"no slot {sync.slot}")
    parts.append(f"publication {sync.publication} dropped")
    parts.append("state removed" if forgot else "no state")
    parts.append(f"Delta tables dropped: {', '.join(dropped)}" if dropped else "Delta tables kept")
    return " ".join(parts[:1]) + " " + "; ".join(parts[1:])


def _drop(uri: str) -> list[str]:
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(
            f"--drop-table removes local Delta tables only; delete {uri} with your object "
            "store's tools"
        )
    path = Path(uri.removeprefix("file://"))
    if not (path / "_delta_log").is_dir():
        return []
    shutil.rmtree(path)
    return [str(path)]
