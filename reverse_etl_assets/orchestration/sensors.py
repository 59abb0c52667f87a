"""The `on_source_change` sensor: sync a table when its Delta source's version moves.

The detection is a plain function over JSON cursors so it is tested without Dagster.
"""

import json

import dagster as dg

from reverse_etl_assets.delta.reader import latest_version
from reverse_etl_assets.errors import ReverseEtlError
from reverse_etl_assets.orchestration.translator import SyncedTableTranslator
from reverse_etl_assets.spec import SyncedTable

SENSOR_NAME = "synced_tables_on_source_change"
MINIMUM_INTERVAL_SECONDS = 15


def new_versions(
    cursor: dict[str, int], current: dict[str, int]
) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Tables whose version differs from the cursor's (unseen ones included), and the new cursor.

    A version that went down (the source was recreated) counts as a change too.
    """
    moved = [
        (name, version) for name, version in sorted(current.items()) if cursor.get(name) != version
    ]
    return moved, {**cursor, **current}


def source_change_sensor(
    tables: list[SyncedTable], translator: SyncedTableTranslator | None = None
) -> dg.SensorDefinition:
    """One sensor for every table with `on_source_change: true`."""
    translator = translator or SyncedTableTranslator()
    keys = {t.name: translator.get_asset_spec(t).key for t in tables}

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=dg.AssetSelection.assets(*keys.values()),
        description="Syncs a synced table when the Delta version of its source moves.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        current: dict[str, int] = {}
        for table in tables:
            try:
                current[table.name] = latest_version(
                    table.source_uri, storage_options=table.storage_options
                )
            except ReverseEtlError as exc:
                context.log.warning(f"{table.name}: cannot read the source version: {exc}")
        moved, cursor = new_versions(cursor, current)
        requests = [
            dg.RunRequest(
                run_key=f"{name}@{version}",
                asset_selection=[keys[name]],
                tags={"reverse_etl/table": name, "reverse_etl/source_version": str(version)},
            )
            for name, version in moved
        ]
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))

    return _sensor
