"""Tests of the Postgres IO manager: what an asset returns lands in a Postgres table, swapped in.

Polars frames, Arrow tables and record-batch streams go through `dg.materialize` to real Postgres.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import dagster as dg
import polars as pl
import psycopg
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal
from psycopg import sql

from reverse_etl_assets.orchestration.io_manager import PostgresTableIOManager

KEY = dg.AssetKey(["app", "items"])
METADATA = {"primary_key": ["id"], "indexes": [["name", "day"]]}

FRAME = pl.DataFrame(
    {
        "id": pl.Series([1, 2, 3], dtype=pl.Int64),
        "name": ["a", None, "ü 😀"],
        "score": [1.5, float("nan"), -2.0],
        "active": [True, False, None],
        "day": [dt.date(2024, 2, 29), dt.date(1, 1, 1), None],
        "at": pl.Series(
            [
                dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC),
                None,
                dt.datetime(9999, 12, 31, tzinfo=dt.UTC),
            ],
            dtype=pl.Datetime("us", "UTC"),
        ),
        "naive": pl.Series([dt.datetime(2024, 1, 1, 12), None, dt.datetime(1, 1, 1)]),
        "small": pl.Series([1, -2, None], dtype=pl.Int32),
        "amount": pl.Series([Decimal("1.25"), None, Decimal("-3.50")], dtype=pl.Decimal(10, 2)),
    }
)
PG_TYPES = {
    "id": "bigint",
    "name": "text",
    "score": "double precision",
    "active": "boolean",
    "day": "date",
    "at": "timestamp with time zone",
    "naive": "timestamp without time zone",
    "small": "integer",
    "amount": "numeric(10,2)",
}

ARROW_V1 = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "label": ["one", "two", "three"]})
ARROW_V2 = [
    pa.record_batch({"id": pa.array([10, 11], pa.int64()), "label": ["ten", "eleven"]}),
    pa.record_batch({"id": pa.array([12, None], pa.int64()), "label": ["twelve", "no key"]}),
]


@pytest.fixture
def io_manager(pg_dsn: str) -> PostgresTableIOManager:
    return PostgresTableIOManager(dsn=pg_dsn)


@pytest.fixture
def reader_role(pg_dsn: str) -> Iterator[str]:
    """A role of its own for one test (roles are cluster-wide), dropped afterwards."""
    role = f"reader_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _items(value: Callable[[], Any], metadata: dict[str, Any]) -> dg.AssetsDefinition:
    """An asset `app/items` stored by the Postgres IO manager, returning `value()`."""

    @dg.asset(key=KEY, metadata=metadata, io_manager_key="postgres_io_manager")
    def items() -> Any:
        return value()

    return items


def _materialize(
    assets: list[dg.AssetsDefinition], io_manager: PostgresTableIOManager, *, ok: bool = True
) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        assets, resources={"postgres_io_manager": io_manager}, raise_on_error=False
    )
    assert result.success is ok
    return result


def _query(dsn: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def _rows(dsn: str) -> list[tuple[Any, ...]]:
    return _query(dsn, "SELECT id, label FROM app.items ORDER BY id")


def _tables(dsn: str) -> set[str]:
    return {r[0] for r in _query(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'app'")}


def _output_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == KEY]
    materialization = event.step_materialization_data.materialization
    return {k: v.value for k, v in materialization.metadata.items()}


def _downstream(loaded: list[pl.DataFrame]) -> dg.AssetsDefinition:
    """An asset reading `app/items` through the IO manager into `loaded`."""

    @dg.asset(ins={"items": dg.AssetIn(key=KEY)})
    def downstream(items: pl.DataFrame) -> None:
        loaded.append(items)

    return downstream


def test_polars_frame_lands_typed_keyed_and_loads_back_equal(
    pg_dsn: str, io_manager: PostgresTableIOManager
) -> None:
    # Sessions default to another zone: timestamptz must still come back as the UTC it was.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        [(database,)] = conn.execute("SELECT current_database()").fetchall()
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET TimeZone = 'America/New_York'").format(
                sql.Identifier(database)
            )
        )
    loaded: list[pl.DataFrame] = []

    result = _materialize([_items(lambda: FRAME, METADATA), _downstream(loaded)], io_manager)

    assert _output_metadata(result)["dagster/row_count"] == 3
    columns = _query(
        pg_dsn,
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'app.items'::regclass AND attnum > 0 ORDER BY attnum",
    )
    assert dict(columns) == PG_TYPES
    [(primary_key,)] = _query(
        pg_dsn,
        "SELECT array_agg(a.attname ORDER BY a.attnum)::text[] FROM pg_index x "
        "JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY(x.indkey) "
        "WHERE x.indrelid = 'app.items'::regclass AND x.indisprimary",
    )
    assert primary_key == ["id"]
    indexes = [
        r[0] for r in _query(pg_dsn, "SELECT indexdef FROM pg_indexes WHERE tablename = 'items'")
    ]
    assert any("(name, day)" in ix for ix in indexes), indexes
    [frame] = loaded
    assert_frame_equal(frame.sort("id"), FRAME)


def test_arrow_table_then_batch_stream_swap_atomically_and_keep_grants(
    pg_dsn: str, io_manager: PostgresTableIOManager, reader_role: str
) -> None:
    _materialize([_items(lambda: ARROW_V1, {"primary_key": ["id"]})], io_manager)
    assert _rows(pg_dsn) == [(1, "one"), (2, "two"), (3, "three")]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA app TO {}").format(sql.Identifier(reader_role)))
        conn.execute(sql.SQL("GRANT SELECT ON app.items TO {}").format(sql.Identifier(reader_role)))
    seen_while_loading: list[list[tuple[Any, ...]]] = []

    def while_loading(batch: pa.RecordBatch) -> pa.RecordBatch:
        seen_while_loading.append(_rows(pg_dsn))  # a reader, mid-stream
        return batch

    result = _materialize(
        [_items(lambda: map(while_loading, ARROW_V2), {"primary_key": ["id"]})], io_manager
    )

    assert seen_while_loading == [[(1, "one"), (2, "two"), (3, "three")]] * 2
    assert _rows(pg_dsn) == [(10, "ten"), (11, "eleven"), (12, "twelve")]
    metadata = _output_metadata(result)
    assert (metadata["dagster/row_count"], metadata["skipped_null_keys"]) == (3, 1)
    [(can_select,)] = _query(
        pg_dsn, "SELECT has_table_privilege(%s, 'app.items', 'SELECT')", reader_role
    )
    assert can_select
    assert _tables(pg_dsn) == {"items"}


def test_empty_frame_loads_back_with_its_dtypes(io_manager: PostgresTableIOManager) -> None:
    loaded: list[pl.DataFrame] = []

    _materialize([_items(lambda: FRAME.clear(), METADATA), _downstream(loaded)], io_manager)

    [frame] = loaded
    assert frame.schema == FRAME.schema
    assert frame.is_empty()


def test_record_batch_reader_is_stored(pg_dsn: str, io_manager: PostgresTableIOManager) -> None:
    reader = pa.RecordBatchReader.from_batches(
        ARROW_V1.schema, ARROW_V1.to_batches(max_chunksize=1)
    )

    _materialize([_items(lambda: reader, {"primary_key": ["id"]})], io_manager)

    assert _rows(pg_dsn) == [(1, "one"), (2, "two"), (3, "three")]


def test_duplicate_keys_fail_and_leave_the_previous_table(
    pg_dsn: str, io_manager: PostgresTableIOManager
) -> None:
    _materialize([_items(lambda: pl.from_arrow(ARROW_V1), {"primary_key": ["id"]})], io_manager)
    duplicated = pl.DataFrame({"id": [7, 8, 7], "label": ["x", "y", "z"]})

    result = _materialize(
        [_items(lambda: duplicated, {"primary_key": ["id"]})], io_manager, ok=False
    )

    [failure] = result.get_step_failure_events()
    message = str(failure.step_failure_data.error)
    assert "duplicate primary key" in message
    assert "{'id': 7} x2" in message
    assert _rows(pg_dsn) == [(1, "one"), (2, "two"), (3, "three")]
    assert _tables(pg_dsn) == {"items"}
