"""The `lakehouse_syncs:` block: parsed into LakehouseSync, every mistake refused with the sync
and the field named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.spec import parse_spec

SYNC = {"name": "app_events", "tables": ["public.signups", "app.orders"], "target": "bronze.app"}
TABLE = {"name": "lakebase.gold.users_synced", "source": "a.b.c", "primary_key": ["id"]}


def parse(tmp_path: Path, *syncs: dict[str, Any], tables: list[Any] | None = None) -> Any:
    raw: dict[str, Any] = {"lake_root": str(tmp_path / "lake"), "lakehouse_syncs": list(syncs)}
    if tables is not None:
        raw["synced_tables"] = tables
    return parse_spec(raw, path=tmp_path / "s.yaml")


def test_a_lakehouse_sync_is_parsed_with_its_defaults_and_locations(tmp_path: Path) -> None:
    spec = parse(tmp_path, SYNC)
    assert spec.synced_tables == ()
    sync = spec.lakehouse_sync("app_events")
    assert sync is not None
    assert sync.tables == (("public", "signups"), ("app", "orders"))
    assert (sync.mode, sync.history, sync.mirror, sync.flush_interval_seconds) == (
        "continuous",
        True,
        True,
        1.0,
    )
    assert sync.slot == sync.publication == "reverse_etl_app_events"
    assert sync.mirror_uri("orders") == str(tmp_path / "lake/bronze/app/orders")
    assert sync.history_uri("orders") == str(tmp_path / "lake/bronze/app/lb_orders_history")
    assert sync.target_parts == ["bronze", "app"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"name": "bad-name"}, "`name` must match"),
        ({"tables": ["orders"]}, "<schema>.<table>"),
        ({"tables": [], "schemas": []}, "name what to stream"),
        ({"target": ""}, "`target` is required"),
        ({"mode": "snapshot"}, "`mode` must be one of"),
        ({"schedule": "0 * * * *"}, "triggered lakehouse syncs only"),
        ({"mode": "triggered", "schedule": "hourly"}, "5-field cron"),
        ({"history": False, "mirror": False}, "nothing would be written"),
        ({"flush_interval_seconds": 0}, "flush_interval_seconds"),
        ({"source_dsn_env": "not a var"}, "source_dsn_env"),
        ({"colour": "red"}, "unknown key(s) ['colour']"),
        ({"tables": ["public.t", "public.t"]}, "twice"),
    ],
)
def test_bad_lakehouse_syncs_are_refused(
    tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    with pytest.raises(SpecError) as info:
        parse(tmp_path, {**SYNC, **changes})
    assert expected in str(info.value)


def test_a_name_is_unique_across_both_blocks(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="declared twice"):
        parse(tmp_path, SYNC, {**SYNC, "target": "bronze.other"})
    clash = {**TABLE, "name": "a.b.app_events"}
    parse(tmp_path, SYNC, tables=[clash])  # a three-part name differs from a sync's name
    with pytest.raises(SpecError, match="declared twice"):
        parse(tmp_path, SYNC, {**SYNC, "name": "APP_EVENTS", "target": "x.y"})


def test_two_tables_landing_at_one_location_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="would both land at"):
        parse(tmp_path, {**SYNC, "tables": ["public.orders", "app.orders"]})
    other = {**SYNC, "name": "other", "tables": ["shop.orders"]}
    with pytest.raises(SpecError, match="would both land at"):
        parse(tmp_path, SYNC, other)
    parse(tmp_path, SYNC, {**other, "target": "bronze.shop"})
