"""Readers never queue behind a sync: a schema change that needs an exclusive lock waits for it
briefly, backs off and retries, and gives up with a transient error while a reader holds on."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from reverse_etl_assets.errors import TransientError
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.postgres import apply
from reverse_etl_assets.postgres.state import read_state
from reverse_etl_assets.schema.delta_to_postgres import pg_columns
from reverse_etl_assets_tests.helpers import fetch, items, one_table, postgres_rows, write_delta


def test_an_added_column_never_queues_readers_behind_the_sync(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apply, "ADD_COLUMN_ATTEMPTS", 3, raising=False)
    src = tmp_path / "src"
    write_delta(src, items(range(5)))
    table = one_table(
        tmp_path, source=str(src), primary_key=["id"], mode="triggered", full_refresh_threshold=1.0
    )
    sync_table(table, pg_dsn)
    wider = items([5]).append_column("score", pa.array([1.5]))
    write_deltalake(str(src), wider, mode="append", schema_mode="merge")

    with psycopg.connect(pg_dsn) as long_reader:
        long_reader.execute("SELECT count(*) FROM gold.items_synced").fetchone()  # stays open
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                sync_table(table, pg_dsn)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        # New readers keep being served while the sync tries to add the column.
        slowest = 0.0
        with psycopg.connect(pg_dsn, autocommit=True) as reader:
            reader.execute("SET statement_timeout = '3s'")
            while worker.is_alive() and slowest < 3:
                started = time.monotonic()
                try:
                    reader.execute("SELECT count(*) FROM gold.items_synced").fetchone()
                except psycopg.errors.QueryCanceled:
                    slowest = 3.0
                    break
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.1)
        worker.join(timeout=30)
        hung = worker.is_alive()
    worker.join(timeout=30)  # the long reader is gone: an unfixed sync finishes now

    assert not hung, "the sync waited for the reader instead of giving up"
    assert slowest < 2.0, f"a new reader waited {slowest:.1f}s behind the sync"
    [error] = outcome
    assert isinstance(error, TransientError)
    assert "a reader holds the table" in str(error)
    assert "score" in str(error)
    with psycopg.connect(pg_dsn) as conn:
        state = read_state(conn, table.name)
    assert state is not None and state.state == states.ONLINE_PIPELINE_FAILED
    assert state.last_synced_version == 0
    assert fetch(pg_dsn, "SELECT count(*) FROM gold.items_synced") == [(5,)]

    # The reader gone, the next sync adds the column and applies the version.
    assert sync_table(table, pg_dsn).path == "incremental"
    assert postgres_rows(pg_dsn)[-1] == (5, "v5", 1.5)


def test_add_column_statement_quotes_the_name() -> None:
    [column] = pg_columns(pa.schema([pa.field('we"ird', pa.float64())]), table="t")
    text = apply.add_column_statement("gold", "t", column).as_string(None)
    assert text == 'ALTER TABLE "gold"."t" ADD COLUMN "we""ird" double precision'
