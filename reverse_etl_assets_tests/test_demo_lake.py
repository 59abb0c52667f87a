"""Tests of the demo lake: the three tables, their types, Change Data Feed and edge rows.

Writing again must leave existing tables alone, so `make demo` can run any number of times.
"""

from __future__ import annotations

import math
from pathlib import Path

from deltalake import DeltaTable

from reverse_etl_assets.dev.demo_lake import (
    PRODUCT_CATALOG_SCHEMA,
    USER_FEATURES_SCHEMA,
    USER_PROFILES_SCHEMA,
    build_user_profiles,
    ensure_demo_lake,
)

NAMES = [
    "analytics.gold.user_profiles",
    "analytics.gold.product_catalog",
    "analytics.ml.user_features",
]


def _table(root: Path, name: str) -> DeltaTable:
    return DeltaTable(str(root.joinpath(*name.split("."))))


def test_writes_three_cdf_tables_once(lake_root: Path) -> None:
    assert ensure_demo_lake(lake_root, rows=50) == NAMES
    assert ensure_demo_lake(lake_root, rows=50) == NAMES

    for name, schema in zip(
        NAMES, [USER_PROFILES_SCHEMA, PRODUCT_CATALOG_SCHEMA, USER_FEATURES_SCHEMA], strict=True
    ):
        table = _table(lake_root, name)
        assert table.version() == 0
        assert table.metadata().configuration == {"delta.enableChangeDataFeed": "true"}
        data = table.to_pyarrow_table()
        assert data.num_rows == 50
        assert data.schema.names == schema.names
        assert data.schema.field(0).nullable is False


def test_edge_rows_keep_empty_strings_nulls_and_unicode(lake_root: Path) -> None:
    ensure_demo_lake(lake_root, rows=20)
    users = _table(lake_root, NAMES[0]).to_pyarrow_table().sort_by("user_id").to_pylist()
    products = _table(lake_root, NAMES[1]).to_pyarrow_table().sort_by("sku").to_pylist()

    assert users[0]["email"] == "" and users[1]["email"] is None
    assert "🚀" in users[2]["full_name"] and math.isnan(users[3]["ratio"])
    assert products[0]["attributes"] == [] and products[1]["attributes"] is None
    assert products[0]["dimensions"] == {"width": None, "height": None, "unit": None}


def test_generation_is_deterministic() -> None:
    assert repr(build_user_profiles(200).to_pylist()) == repr(build_user_profiles(200).to_pylist())
