"""Builds the Dagster Definitions from the spec: the only place that wires things together.

`dagster dev` / `dagster asset materialize -m reverse_etl_assets` load `defs` through the
package; it is built from the spec when Dagster asks for it (`@dg.definitions`), not at import.
"""

from collections.abc import Iterator

import dagster as dg

from reverse_etl_assets import settings
from reverse_etl_assets.orchestration.asset_decorator import IO_MANAGER_KEY, synced_table_assets
from reverse_etl_assets.orchestration.checks import equality_checks
from reverse_etl_assets.orchestration.continuous import follower_sensor
from reverse_etl_assets.orchestration.io_manager import PostgresTableIOManager
from reverse_etl_assets.orchestration.pending_sync import PendingSync
from reverse_etl_assets.orchestration.resources import PostgresTarget
from reverse_etl_assets.orchestration.sensors import source_change_sensor
from reverse_etl_assets.orchestration.sources import delta_source_assets
from reverse_etl_assets.orchestration.translator import SyncedTableTranslator
from reverse_etl_assets.spec import Spec, load_spec

AUTOMATION_SENSOR = "synced_tables_automation"
AUTOMATION_INTERVAL_SECONDS = 30


def build_definitions(
    spec: Spec, translator: SyncedTableTranslator | None = None
) -> dg.Definitions:
    """Assets, checks, automation and resources for every synced table of `spec`."""
    translator = translator or SyncedTableTranslator()
    if not spec.synced_tables:
        return dg.Definitions(resources=_resources())

    @synced_table_assets(spec=spec, translator=translator)
    def synced_tables(
        context: dg.AssetExecutionContext, postgres: PostgresTarget
    ) -> Iterator[dg.AssetObservation | dg.Output[PendingSync]]:
        yield from postgres.read_sources(context)  # the Postgres IO manager lands each

    sources = delta_source_assets(spec.synced_tables, translator)
    checks = [
        equality_checks(
            t, translator.get_asset_spec(t).key, translator.get_check_automation_condition(t)
        )
        for t in spec.synced_tables
    ]
    # Observes the sources, runs the schedules and the checks after each sync.
    sensors: list[dg.SensorDefinition] = [
        dg.AutomationConditionSensorDefinition(
            AUTOMATION_SENSOR,
            target=dg.AssetSelection.assets(*sources.keys, *synced_tables.keys),
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
        )
    ]
    watched = [t for t in spec.synced_tables if t.on_source_change]
    if watched:
        sensors.append(source_change_sensor(watched, translator))
    followed = [t for t in spec.synced_tables if t.mode == "continuous"]
    if followed:
        sensors.append(follower_sensor(followed, translator))
    return dg.Definitions(
        assets=[sources, synced_tables],
        asset_checks=checks,
        sensors=sensors,
        resources=_resources(),
    )


def _resources() -> dict[str, object]:
    return {"postgres": PostgresTarget(), IO_MANAGER_KEY: PostgresTableIOManager()}


def load_definitions() -> dg.Definitions:
    """Definitions for the spec named by REVERSE_ETL_SPEC (default: the demo spec)."""
    return build_definitions(load_spec(settings.spec_path()))


@dg.definitions
def defs() -> dg.Definitions:
    """The code location: what `dagster dev` and `dg` load."""
    return load_definitions()
