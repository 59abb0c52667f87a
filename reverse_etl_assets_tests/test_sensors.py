"""The on_source_change sensor: the detection function, and the sensor against a real Delta table.

Run keys name table and version, so a version is requested once however often the sensor ticks.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pyarrow as pa

from reverse_etl_assets.definitions import build_definitions
from reverse_etl_assets.orchestration.sensors import SENSOR_NAME, new_versions
from reverse_etl_assets_tests.helpers import spec_of, write_delta


def test_new_versions_detects_moves_and_new_tables() -> None:
    moved, cursor = new_versions({"a": 1, "b": 4}, {"a": 2, "b": 4, "c": 0})
    assert moved == [("a", 2), ("c", 0)]
    assert cursor == {"a": 2, "b": 4, "c": 0}
    assert new_versions(cursor, cursor) == ([], cursor)
    assert new_versions({"a": 5}, {"a": 0})[0] == [("a", 0)]  # recreated source


def test_sensor_requests_a_sync_per_new_version(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_delta(src, pa.table({"id": pa.array([1], pa.int64())}))
    spec = spec_of(
        tmp_path,
        {"name": "lb.gold.watched", "source": str(src), "primary_key": ["id"], "mode": "triggered",
         "on_source_change": True},
        {"name": "lb.gold.quiet", "source": str(src), "primary_key": ["id"]},
    )  # fmt: skip
    defs = build_definitions(spec)
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor: str | None) -> dg.SensorResult:
        context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
        result = sensor.evaluate_tick(context)
        return result  # type: ignore[return-value]

    first = tick(None)
    assert [r.run_key for r in first.run_requests] == ["lb.gold.watched@0"]
    assert first.run_requests[0].asset_selection == [dg.AssetKey(["lb", "gold", "watched"])]
    assert json.loads(first.cursor) == {"lb.gold.watched": 0}
    assert tick(first.cursor).run_requests == []
    write_delta(src, pa.table({"id": pa.array([2], pa.int64())}))
    moved = tick(first.cursor)
    assert [r.run_key for r in moved.run_requests] == ["lb.gold.watched@1"]
