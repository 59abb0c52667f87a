"""Builds the Dagster Definitions from the spec: the only place that wires things together.

`dagster dev` / `dagster asset materialize -m reverse_etl_assets` load it through the package.
"""

from __future__ import annotations

import dagster as dg

from reverse_etl_assets import settings
from reverse_etl_assets.orchestration.assets import (
    source_asset,
    source_asset_key,
    synced_table_asset,
)
from reverse_etl_assets.orchestration.checks import equality_checks
from reverse_etl_assets.orchestration.continuous import follower_sensor
from reverse_etl_assets.orchestration.io_manager import PostgresTableIOManager
from reverse_etl_assets.orchestration.resources import PostgresTarget
from reverse_etl_assets.orchestration.sensors import source_change_sensor
from reverse_etl_assets.spec import Spec, load_spec


def build_definitions(spec: Spec) -> dg.Definitions:
    """Assets, automation and resources for every synced table of `spec`."""
    sources: dict[dg.AssetKey, dg.SourceAsset] = {}
    synced = []
    checks = []
    for table in spec.synced_tables:
        sources.setdefault(source_asset_key(table), source_asset(table))
        synced.append(synced_table_asset(table))
        checks.append(equality_checks(table))
    scheduled = [dg.AssetKey(t.asset_key_path) for t in spec.synced_tables if t.schedule]
    sensors: list[dg.SensorDefinition] = []
    if scheduled:
        sensors.append(
            dg.AutomationConditionSensorDefinition(
                "synced_table_schedules",
                target=dg.AssetSelection.assets(*scheduled),
                default_status=dg.DefaultSensorStatus.RUNNING,
            )
        )
    watched = [t for t in spec.synced_tables if t.on_source_change]
    if watched:
        sensors.append(source_change_sensor(watched))
    followed = [t for t in spec.synced_tables if t.mode == "continuous"]
    if followed:
        sensors.append(follower_sensor(followed))
    return dg.Definitions(
        assets=[*sources.values(), *synced],
        asset_checks=checks,
        sensors=sensors,
        resources={"postgres": PostgresTarget(), "postgres_io_manager": PostgresTableIOManager()},
    )


def load_definitions() -> dg.Definitions:
    """Definitions for the spec named by REVERSE_ETL_SPEC (default: the demo spec)."""
    return build_definitions(load_spec(settings.spec_path()))
