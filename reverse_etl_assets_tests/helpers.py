"""Small builders shared by the tests: Delta tables in tmp dirs, specs, Postgres reads.

Real components only: deltalake writes the tables, psycopg reads what landed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import psycopg
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from psycopg import sql

from reverse_etl_assets.postgres.state import TableState, read_state
from reverse_etl_assets.spec import Spec, SyncedTable, parse_spec


def write_delta(
    path: Path | str, data: pa.Table, *, mode: str = "append", cdf: bool = True
) -> None:
    """Write (or append to) a Delta table, CDF on by default."""
    configuration = {"delta.enableChangeDataFeed": "true"} if cdf else None
    write_deltalake(str(path), data, mode=mode, configuration=configuration)  # type: ignore[arg-type]


def spec_of(tmp_path: Path, *tables: dict[str, Any], lake_root: Path | None = None) -> Spec:
    """A Spec built from table mappings as they would appear in the YAML."""
    raw: dict[str, Any] = {"synced_tables": list(tables)}
    if lake_root is not None:
        raw["lake_root"] = str(lake_root)
    return parse_spec(raw, path=tmp_path / "synced_tables.yaml")


ITEMS_SYNCED = "lakebase.gold.items_synced"


def one_table(tmp_path: Path, **entry: Any) -> SyncedTable:
    """The single synced table of a spec made from `entry`."""
    entry.setdefault("name", ITEMS_SYNCED)
    return spec_of(tmp_path, entry).synced_tables[0]


def stored_state(dsn: str, name: str = ITEMS_SYNCED) -> TableState:
    """The stored state of synced table `name` (it must have one)."""
    with psycopg.connect(dsn) as conn:
        found = read_state(conn, name)
    assert found is not None, f"no state stored for {name}"
    return found


def fetch(
    dsn: str, query: str | sql.Composable, params: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    """All rows of a query."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def rows_of(dsn: str, schema: str, table: str, order_by: str) -> list[tuple[Any, ...]]:
    """Every row of a table, ordered."""
    return fetch(
        dsn,
        sql.SQL("SELECT * FROM {} ORDER BY {}").format(
            sql.Identifier(schema, table), sql.Identifier(order_by)
        ),
    )


def table_exists(dsn: str, schema: str, table: str) -> bool:
    """Whether schema.table exists."""
    return bool(fetch(dsn, "SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}"."{table}"',))[0][0])


def items(ids: range | list[int], tag: str = "v") -> pa.Table:
    """A small (id, v) table: v is `tag` followed by the id."""
    ids = list(ids)
    return pa.table({"id": pa.array(ids, pa.int64()), "v": [f"{tag}{i}" for i in ids]})


def postgres_rows(dsn: str, table: str = "gold.items_synced") -> list[tuple[Any, ...]]:
    """Every row of a synced table, by id."""
    return fetch(dsn, f"SELECT * FROM {table} ORDER BY id")


def delta_rows(path: Path, version: int | None = None) -> list[tuple[Any, ...]]:
    """Every row of a Delta table at a version, by id, as Postgres returns them."""
    frame = pl.from_arrow(DeltaTable(str(path), version=version).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    return [tuple(r) for r in frame.sort("id").iter_rows()]


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`reverse-etl ARGS` in a fresh interpreter, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "reverse_etl_assets.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def postgres_resources(dsn: str = "") -> dict[str, Any]:
    """What the synced-table assets need: the target Postgres (read side) and the IO manager
    that lands their output (empty `dsn`: REVERSE_ETL_PG_DSN)."""
    from reverse_etl_assets.orchestration.io_manager import PostgresTableIOManager
    from reverse_etl_assets.orchestration.resources import PostgresTarget

    return {
        "postgres": PostgresTarget(dsn=dsn),
        "postgres_io_manager": PostgresTableIOManager(dsn=dsn),
    }


def launch_run(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    request: dg.RunRequest,
    *,
    op: str,
    **config: Any,
) -> tuple[threading.Thread, list[Any]]:
    """Run a sensor's requested run like a run worker would: in process, in a thread (its
    result lands in the list); `config` is the config of op `op`."""
    outcome: list[Any] = []
    run_config = {"ops": {op: {"config": config}}}
    thread = threading.Thread(
        target=lambda: outcome.append(
            job.execute_in_process(
                instance=instance, tags=request.tags, run_config=run_config, raise_on_error=False
            )
        ),
        daemon=True,
    )
    thread.start()
    return thread, outcome
