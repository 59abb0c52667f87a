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
from reverse_etl_assets.orchestration.lakehouse_asset_decorator import (
    lakehouse_sync_assets,
    lakehouse_table_of,
)
from reverse_etl_assets.orchestration.lakehouse_checks import mirror_checks, retained_wal_checks
from reverse_etl_assets.orchestration.lakehouse_resource import (
    LakehouseSyncResource,
    max_retained_wal_bytes,
)
from reverse_etl_assets.orchestration.lakehouse_translator import (
    LakehouseSyncTranslator,
    lakehouse_tables,
)
from reverse_etl_assets.orchestration.pending_sync import PendingSync
from reverse_etl_assets.orchestration.resources import PostgresTarget
from reverse_etl_assets.orchestration.sensors import source_change_sensor
from reverse_etl_assets.orchestration.sources import delta_source_assets
from reverse_etl_assets.orchestration.translator import SyncedTableTranslator
from reverse_etl_assets.spec import LakehouseSync, Spec, load_spec

AUTOMATION_SENSOR = "synced_tables_automation"
AUTOMATION_INTERVAL_SECONDS = 30


def build_definitions(
    spec: Spec,
    translator: SyncedTableTranslator | None = None,
    lakehouse_translator: LakehouseSyncTranslator | None = None,
) -> dg.Definitions:
    """Assets, checks, automation and resources for every synced table and lakehouse sync of
    `spec`."""
    translator = translator or SyncedTableTranslator()
    lakehouse_translator = lakehouse_translator or LakehouseSyncTranslator()
    assets: list[dg.AssetsDefinition | dg.AssetSpec] = []
    checks: list[dg.AssetChecksDefinition] = []

    written: set[dg.AssetKey] = set()
    for sync in spec.lakehouse_syncs:
        drained = _lakehouse_assets(sync, lakehouse_translator)
        if drained is not None:
            assets.append(drained)
            checks += _lakehouse_checks(sync, drained, lakehouse_translator)
            written.update(drained.keys)
    assets += _postgres_tables(spec, lakehouse_translator)

    if spec.synced_tables:

        @synced_table_assets(spec=spec, translator=translator)
        def synced_tables(
            context: dg.AssetExecutionContext, postgres: PostgresTarget
        ) -> Iterator[dg.AssetObservation | dg.Output[PendingSync]]:
            yield from postgres.read_sources(context)  # the Postgres IO manager lands each

        # The closed loop: a synced table whose source is a mirror depends on the mirror's
        # asset (its data version is its Delta version); that source is not observed as well.
        observed = [
            t for t in spec.synced_tables if translator.get_source_spec(t).key not in written
        ]
        if observed:
            assets.append(delta_source_assets(observed, translator))
        assets.append(synced_tables)
        checks += [
            equality_checks(
                t, translator.get_asset_spec(t).key, translator.get_check_automation_condition(t)
            )
            for t in spec.synced_tables
        ]
    if not assets:
        return dg.Definitions(resources=_resources())

    # Observes the sources, runs the schedules and the checks after each sync.
    sensors: list[dg.SensorDefinition] = [
        dg.AutomationConditionSensorDefinition(
            AUTOMATION_SENSOR,
            target=dg.AssetSelection.assets(
                *(a for a in assets if isinstance(a, dg.AssetsDefinition))
            ),
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
        )
    ]
    watched = [t for t in spec.synced_tables if t.on_source_change]
    if watched:
        sensors.append(source_change_sensor(watched, translator))
    followed = [t for t in spec.synced_tables if t.mode == "continuous"]
    streamed = [s for s in spec.lakehouse_syncs if s.mode == "continuous"]
    if followed or streamed:
        sensors.append(
            follower_sensor(
                followed,
                translator,
                lakehouse_syncs=streamed,
                lakehouse_translator=lakehouse_translator,
            )
        )
    return dg.Definitions(
        assets=assets, asset_checks=checks, sensors=sensors, resources=_resources()
    )


def _lakehouse_assets(
    sync: LakehouseSync, translator: LakehouseSyncTranslator
) -> dg.AssetsDefinition | None:
    """The multi-asset of `sync`; None when it names no tables (only `schemas`)."""
    if not lakehouse_tables(sync):
        return None

    @lakehouse_sync_assets(sync=sync, translator=translator)
    def _drain(
        context: dg.AssetExecutionContext, lakehouse: LakehouseSyncResource
    ) -> Iterator[dg.MaterializeResult]:
        yield from lakehouse.sync(context)

    return _drain


def _lakehouse_checks(
    sync: LakehouseSync, drained: dg.AssetsDefinition, translator: LakehouseSyncTranslator
) -> list[dg.AssetChecksDefinition]:
    tables = {key: lakehouse_table_of(spec) for key, spec in drained.specs_by_key.items()}
    mirrors = {key: table for key, table in tables.items() if table.kind == "mirror"}
    condition = translator.get_check_automation_condition(sync)
    checks = [retained_wal_checks(sync, list(tables), condition)]
    if mirrors:
        checks.append(mirror_checks(sync, mirrors, condition))
    return checks


def _postgres_tables(spec: Spec, translator: LakehouseSyncTranslator) -> list[dg.AssetSpec]:
    """The external Postgres tables the lakehouse syncs read, each declared once."""
    found: dict[dg.AssetKey, dg.AssetSpec] = {}
    for sync in spec.lakehouse_syncs:
        for schema, table in sync.tables:
            table_spec = translator.get_postgres_table_spec(sync, schema, table)
            found.setdefault(table_spec.key, table_spec)
    return list(found.values())


def _resources() -> dict[str, object]:
    return {
        "postgres": PostgresTarget(),
        IO_MANAGER_KEY: PostgresTableIOManager(),
        "lakehouse": LakehouseSyncResource(max_retained_wal_bytes=max_retained_wal_bytes()),
    }


def load_definitions() -> dg.Definitions:
    """Definitions for the spec named by REVERSE_ETL_SPEC (default: the demo spec)."""
    return build_definitions(load_spec(settings.spec_path()))


@dg.definitions
def defs() -> dg.Definitions:
    """The code location: what `dagster dev` and `dg` load."""
    return load_definitions()
