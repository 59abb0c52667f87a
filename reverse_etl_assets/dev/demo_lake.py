"""The demo Delta Lake: three seeded tables with Change Data Feed, written under one root.

`make demo` and the tests use it; a table that already exists is left as it is.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

CDF_CONFIGURATION = {"delta.enableChangeDataFeed": "true"}
DEFAULT_ROWS = 5000

_UTC_US = pa.timestamp("us", tz="UTC")
_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
_YEAR_US = 365 * 24 * 3600 * 1_000_000

USER_PROFILES_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("email", pa.string()),
        pa.field("full_name", pa.string()),
        pa.field("segment", pa.string()),
        pa.field("signup_date", pa.date32()),
        pa.field("last_seen", _UTC_US),
        pa.field("lifetime_value", pa.decimal128(12, 2)),
        pa.field("is_active", pa.bool_()),
        pa.field("age", pa.int16()),
        pa.field("tier", pa.int8()),
        pa.field("score", pa.float32()),
        pa.field("ratio", pa.float64()),
        pa.field("avatar", pa.binary()),
        pa.field("updated_at", pa.timestamp("us")),
    ]
)
PRODUCT_CATALOG_SCHEMA = pa.schema(
    [
        pa.field("sku", pa.string(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("category", pa.string()),
        pa.field("price", pa.decimal128(10, 2)),
        pa.field("stock", pa.int32()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("attributes", pa.map_(pa.string(), pa.string())),
        pa.field(
            "dimensions",
            pa.struct([("width", pa.float64()), ("height", pa.float64()), ("unit", pa.string())]),
        ),
        pa.field("created_at", _UTC_US),
    ]
)
USER_FEATURES_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("feature_map", pa.map_(pa.string(), pa.float64())),
        pa.field(
            "stats",
            pa.struct(
                [
                    ("clicks", pa.int64()),
                    ("views", pa.int64()),
                    ("ctr", pa.float64()),
                    ("last_event", _UTC_US),
                ]
            ),
        ),
        pa.field("model_version", pa.int32()),
        pa.field("scored_at", _UTC_US),
    ]
)

_FIRST_NAMES = ["Ada", "Bruno", "Chloé", "Dmitri", "Elif", "Farah", "Gustavo", "Hana", "Ivo"]
_LAST_NAMES = ["Okafor", "Lindqvist", "García", "Nakamura", "Dubois", "Kowalski", "Singh"]
_SEGMENTS = ["enterprise", "smb", "consumer", "partner", "churned"]
_ADJECTIVES = ["Compact", "Deluxe", "Eco", "Rugged", "Smart", "Vintage", "Wireless"]
_NOUNS = ["Backpack", "Blender", "Desk Lamp", "Headphones", "Kettle", "Monitor", "Sneakers"]
_CATEGORIES = ["home", "audio", "outdoor", "office", "kitchen", "apparel"]
_TAGS = ["new", "sale", "bestseller", "eco", "limited", "gift"]
_COLORS = ["black", "white", "red", "green", "navy"]
_MATERIALS = ["steel", "cotton", "bamboo", "plastic", "leather"]


def ensure_demo_lake(root: Path, *, rows: int = DEFAULT_ROWS) -> list[str]:
    """Write each missing demo table under `root`; return the three-part names of all of them."""
    for name, build in _TABLES.items():
        path = root.joinpath(*name.split("."))
        if not DeltaTable.is_deltatable(str(path)):
            path.mkdir(parents=True, exist_ok=True)
            write_deltalake(str(path), build(rows), configuration=CDF_CONFIGURATION)
    return list(_TABLES)


def build_user_profiles(rows: int) -> pa.Table:
    """Users with one column of each scalar Delta type, edge values in the first rows."""
    r = _randoms(rows, seed=1, count=12)
    frame = r.select(
        user_id=pl.int_range(1, rows + 1, dtype=pl.Int64),
        email=pl.format("user{}@example.com", pl.int_range(1, rows + 1)),
        full_name=pl.format("{} {}", _pick(_FIRST_NAMES, "r0"), _pick(_LAST_NAMES, "r1")),
        segment=_pick(_SEGMENTS, "r2"),
        signup_date=pl.lit(date(2020, 1, 1))
        + pl.duration(days=(pl.col("r3") * 1800).cast(pl.Int64)),
        last_seen=_timestamp_before_epoch("r4"),
        lifetime_value=(pl.col("r5") * 5_000_000).cast(pl.Int64).cast(pl.Decimal(14, 2)) / 100,
        is_active=pl.col("r6") > 0.15,
        age=(18 + pl.col("r7") * 70).cast(pl.Int16),
        tier=(pl.col("r8") * 4).cast(pl.Int8),
        score=(pl.col("r9") * 100).cast(pl.Float32),
        ratio=pl.col("r10"),
        updated_at=_timestamp_before_epoch("r11").dt.replace_time_zone(None),
    )
    table = frame.to_arrow().append_column("avatar", _random_bytes(rows, seed=2))
    return _with_edge_rows(
        table.select(USER_PROFILES_SCHEMA.names).cast(USER_PROFILES_SCHEMA),
        [
            {"email": "", "full_name": "", "segment": "", "avatar": b""},
            _all_null(USER_PROFILES_SCHEMA),
            {"email": "zoë.núñez@exämple.com", "full_name": "Zoë Núñez-Ångström 🚀"},
            {
                "full_name": "李小龍 🐉",
                "ratio": math.nan,
                "score": math.inf,
                "tier": -128,
                "lifetime_value": Decimal("-9999999999.99"),
            },
            {
                "signup_date": date(1, 1, 1),
                "last_seen": datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                "ratio": -math.inf,
                "tier": 127,
                "lifetime_value": Decimal("9999999999.99"),
                "avatar": b"\x00\xff\x00",
            },
        ],
    )


def build_product_catalog(rows: int) -> pa.Table:
    """Products keyed by SKU, with list, map and struct columns."""
    r = _randoms(rows, seed=3, count=11)
    frame = r.select(
        sku=pl.format("SKU-{}", pl.int_range(1, rows + 1).cast(pl.String).str.zfill(6)),
        name=pl.format("{} {}", _pick(_ADJECTIVES, "r0"), _pick(_NOUNS, "r1")),
        category=_pick(_CATEGORIES, "r2"),
        price=(1 + pl.col("r3") * 100_000).cast(pl.Int64).cast(pl.Decimal(12, 2)) / 100,
        stock=(pl.col("r4") * 10_000).cast(pl.Int32),
        tags=pl.concat_list(_pick(_TAGS, "r5"), _pick(_TAGS, "r6")).list.head(
            (pl.col("r7") * 3).cast(pl.Int64)
        ),
        attributes=pl.concat_list(
            pl.struct(key=pl.lit("color"), value=_pick(_COLORS, "r8")),
            pl.struct(key=pl.lit("material"), value=_pick(_MATERIALS, "r9")),
        ).list.head((pl.col("r7") * 3).cast(pl.Int64)),
        dimensions=pl.struct(
            width=(pl.col("r8") * 100).round(1),
            height=(pl.col("r9") * 100).round(1),
            unit=pl.when(pl.col("r10") < 0.8).then(pl.lit("cm")).otherwise(pl.lit("in")),
        ),
        created_at=_timestamp_before_epoch("r10"),
    )
    table = _with_map(frame.to_arrow(), PRODUCT_CATALOG_SCHEMA, "attributes")
    return _with_edge_rows(
        table.cast(PRODUCT_CATALOG_SCHEMA),
        [
            {
                "name": "",
                "tags": [],
                "attributes": [],
                "dimensions": {"width": None, "height": None, "unit": None},
            },
            _all_null(PRODUCT_CATALOG_SCHEMA),
            {
                "name": "Café crème ☕ — édition spéciale",
                "tags": ["été", "🔥", ""],
                "attributes": [("note", "naïve façade"), ("empty", ""), ("missing", None)],
                "dimensions": {"width": 1.5, "height": None, "unit": "cm"},
            },
            {"tags": [None, "sale"], "price": Decimal("99999999.99"), "stock": -2_147_483_648},
        ],
    )


def build_user_features(rows: int) -> pa.Table:
    """ML features for the same users: an embedding, a feature map and a stats struct."""
    r = _randoms(rows, seed=4, count=16)
    views = (pl.col("r8") * 10_000).cast(pl.Int64)
    clicks = (pl.col("r9") * views / 10).cast(pl.Int64)
    frame = r.select(
        user_id=pl.int_range(1, rows + 1, dtype=pl.Int64),
        embedding=pl.concat_list([pl.col(f"r{k}") * 2 - 1 for k in range(8)]).cast(
            pl.List(pl.Float32)
        ),
        feature_map=pl.concat_list(
            pl.struct(key=pl.lit("recency"), value=pl.col("r10")),
            pl.struct(key=pl.lit("frequency"), value=pl.col("r11") * 50),
            pl.struct(key=pl.lit("monetary"), value=pl.col("r12") * 1000),
        ),
        stats=pl.struct(
            clicks=clicks,
            views=views,
            ctr=pl.when(views > 0).then(clicks / views),
            last_event=_timestamp_before_epoch("r13"),
        ),
        model_version=(1 + pl.col("r14") * 3).cast(pl.Int32),
        scored_at=_timestamp_before_epoch("r15"),
    )
    table = _with_map(frame.to_arrow(), USER_FEATURES_SCHEMA, "feature_map")
    return _with_edge_rows(
        table.cast(USER_FEATURES_SCHEMA),
        [
            {
                "embedding": [],
                "feature_map": [],
                "stats": {"clicks": None, "views": None, "ctr": None, "last_event": None},
            },
            _all_null(USER_FEATURES_SCHEMA),
            {
                "embedding": [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-45, 3.4e38, 1.0],
                "feature_map": [("ключ ünïcödé", 1.0), ("nan", math.nan), ("none", None)],
                "stats": {"clicks": 0, "views": 0, "ctr": None, "last_event": _EPOCH},
            },
            {"embedding": [0.5, None, -0.5, None, 0.0, None, 1.0, None]},
        ],
    )


_TABLES: dict[str, Callable[[int], pa.Table]] = {
    "analytics.gold.user_profiles": build_user_profiles,
    "analytics.gold.product_catalog": build_product_catalog,
    "analytics.ml.user_features": build_user_features,
}


def _randoms(rows: int, *, seed: int, count: int) -> pl.DataFrame:
    """Columns r0..r{count-1} of seeded pseudo-random floats in [0, 1)."""
    return pl.DataFrame(
        {f"r{k}": pc.random(rows, initializer=seed * 1000 + k) for k in range(count)}
    )


def _pick(options: Sequence[str], column: str) -> pl.Expr:
    """One of `options` per row, chosen by a random column."""
    index = (pl.col(column) * len(options)).cast(pl.UInt32)
    return pl.lit(pl.Series(options, dtype=pl.String)).gather(index)


def _timestamp_before_epoch(column: str) -> pl.Expr:
    """A UTC timestamp within the year before the demo epoch, with microseconds."""
    offset = (pl.col(column) * _YEAR_US).cast(pl.Int64)
    return pl.lit(_EPOCH).dt.cast_time_unit("us") - pl.duration(microseconds=offset)


def _random_bytes(rows: int, *, seed: int) -> pa.Array:
    """Four seeded random bytes a row, often not valid UTF-8 (as avatars are not)."""
    words = (pl.Series(pc.random(rows, initializer=seed)) * 2**32).cast(pl.UInt32).to_arrow()
    offsets = pl.int_range(0, 4 * (rows + 1), 4, dtype=pl.Int32, eager=True).to_arrow()
    return pa.Array.from_buffers(
        pa.binary(), rows, [None, offsets.buffers()[1], words.buffers()[1]]
    )


def _with_map(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Turn a list<struct<key, value>> column into a MAP, which polars cannot build itself."""
    map_type = schema.field(name).type
    entry = pa.struct(
        [pa.field("key", map_type.key_type, nullable=False), ("value", map_type.item_type)]
    )
    lists = table.column(name).combine_chunks().cast(pa.list_(entry))
    entries = lists.values
    column = pa.MapArray.from_arrays(
        lists.offsets,
        entries.field("key"),
        entries.field("value"),
        type=map_type,
        mask=lists.is_null(),
    )
    return table.set_column(table.schema.get_field_index(name), name, column)


def _all_null(schema: pa.Schema) -> dict[str, Any]:
    return {field.name: None for field in schema if field.nullable}


def _with_edge_rows(table: pa.Table, edits: list[dict[str, Any]]) -> pa.Table:
    """Overwrite the first rows with hand-written edge values (empty vs NULL, unicode, nesting)."""
    head = table.slice(0, len(edits)).to_pylist()
    rows = [row | edit for row, edit in zip(head, edits, strict=True)]
    edge = pa.Table.from_pylist(rows, schema=table.schema)
    return pa.concat_tables([edge, table.slice(len(edits))]).combine_chunks()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the demo lake under ROOT (what is there already stays)."""
    parser = argparse.ArgumentParser(
        prog="python -m reverse_etl_assets.dev.demo_lake",
        description="Write the demo Delta tables (Change Data Feed on) under ROOT when missing.",
    )
    parser.add_argument("root", type=Path)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    args = parser.parse_args(argv)
    for name in ensure_demo_lake(args.root, rows=args.rows):
        print(f"{name}: {args.root.joinpath(*name.split('.'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
