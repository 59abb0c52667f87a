"""Builders for lakehouse-sync tests: a source table in Postgres, a spec, Delta reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import psycopg
from deltalake import DeltaTable

from reverse_etl_assets.spec import LakehouseSync, parse_spec


def lakehouse_sync(tmp_path: Path, **entry: Any) -> LakehouseSync:
    """The single lakehouse sync of a spec made from `entry` (target bronze.app under tmp)."""
    entry.setdefault("name", "app")
    entry.setdefault("tables", ["public.orders"])
    entry.setdefault("target", "bronze.app")
    spec = parse_spec(
        {"lake_root": str(tmp_path / "lake"), "lakehouse_syncs": [entry]},
        path=tmp_path / "spec.yaml",
    )
    return spec.lakehouse_syncs[0]


def execute(dsn: str, *statements: str) -> None:
    """Run statements, each in its own transaction."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def postgres_frame(dsn: str, table: str, key: str = "id") -> pl.DataFrame:
    """A Postgres table as polars, ordered by key (values through psycopg)."""
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(f"SELECT * FROM {table} ORDER BY {key}")  # type: ignore[arg-type]
        names = [d.name for d in cur.description or []]
        rows = cur.fetchall()
    return pl.DataFrame([dict(zip(names, r, strict=True)) for r in rows], infer_schema_length=None)


def delta_rows(uri: str, key: str = "id") -> list[dict[str, Any]]:
    """Every row of a Delta table, ordered by key."""
    frame = pl.from_arrow(DeltaTable(uri).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame.sort(key).to_dicts()


def history(uri: str) -> list[dict[str, Any]]:
    """Every history row in the source's commit order."""
    frame = pl.from_arrow(DeltaTable(uri).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame.sort(
        ["_pg_lsn", "_pg_seq", "_pg_change_type"], descending=[False, False, True]
    ).to_dicts()
