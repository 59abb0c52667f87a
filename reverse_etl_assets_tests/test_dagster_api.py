"""The native Dagster API: a translator a user subclasses, the subsettable decorator, the YAML
component, and transient errors retried in Dagster's terms. Real Postgres, real Delta tables."""

import importlib
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pyarrow as pa
import pytest
import yaml

from reverse_etl_assets.definitions import build_definitions
from reverse_etl_assets.orchestration import failures as failures_module
from reverse_etl_assets.orchestration import io_manager as io_manager_module
from reverse_etl_assets.orchestration.asset_decorator import synced_table_assets
from reverse_etl_assets.orchestration.component import SyncedTablesComponent
from reverse_etl_assets.orchestration.io_manager import PostgresTableIOManager
from reverse_etl_assets.orchestration.pending_sync import PendingSync
from reverse_etl_assets.orchestration.resources import PostgresTarget
from reverse_etl_assets.orchestration.translator import SyncedTableTranslator
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.postgres.state import read_state
from reverse_etl_assets.spec import Spec, SyncedTable
from reverse_etl_assets_tests.helpers import postgres_resources, spec_of, write_delta

ROWS = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"]})


@pytest.fixture
def two_tables(tmp_path: Path) -> Spec:
    for name in ("a", "b"):
        write_delta(tmp_path / name, ROWS)
    return spec_of(
        tmp_path,
        {"name": "lb.gold.a_synced", "source": str(tmp_path / "a"), "primary_key": ["id"]},
        {"name": "lb.gold.b_synced", "source": str(tmp_path / "b"), "primary_key": ["id"]},
    )


def _exists(dsn: str, qualified: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (qualified,)).fetchone()
    return row is not None and row[0] is not None


class TeamTranslator(SyncedTableTranslator):
    """A user's translator: keys under `serving/`, one group per Postgres schema, an owner."""

    def get_asset_spec(self, table: SyncedTable) -> dg.AssetSpec:
        spec = super().get_asset_spec(table)
        return spec.replace_attributes(
            key=dg.AssetKey(["serving", table.pg_table]),
            group_name=f"pg_{table.pg_schema}",
            owners=["team:data-platform"],
        )


def test_a_translator_subclass_changes_keys_and_groups(two_tables: Spec, pg_dsn: str) -> None:
    defs = build_definitions(two_tables, TeamTranslator())
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey(["serving", "a_synced"])
    assert graph.get(key).group_name == "pg_gold"
    assert graph.get(key).owners == ["team:data-platform"]
    assert not graph.has(dg.AssetKey(["lb", "gold", "a_synced"]))
    [source] = graph.get(key).parent_keys
    assert graph.get(source).is_observable
    # The checks follow the new key, and a sync under it works.
    checked = {c.asset_key for c in graph.asset_check_keys}
    assert checked == {key, dg.AssetKey(["serving", "b_synced"])}
    result = dg.materialize(
        [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition)],
        selection=[key],
        resources=postgres_resources(pg_dsn),
    )
    assert result.success
    assert [e.asset_key for e in result.get_asset_materialization_events()] == [key]


def test_the_decorator_builds_a_multi_asset_that_runs_any_subset(
    two_tables: Spec, pg_dsn: str
) -> None:
    @synced_table_assets(spec=two_tables, name="my_tables")
    def my_tables(context: dg.AssetExecutionContext, postgres: PostgresTarget) -> Any:
        yield from postgres.read_sources(context)

    assert my_tables.can_subset
    assert my_tables.op.pool == "reverse_etl_postgres"
    a, b = dg.AssetKey(["lb", "gold", "a_synced"]), dg.AssetKey(["lb", "gold", "b_synced"])
    assert set(my_tables.keys) == {a, b}

    result = dg.materialize([my_tables], selection=[b], resources=postgres_resources(pg_dsn))

    assert result.success
    assert [e.asset_key for e in result.get_asset_materialization_events()] == [b]
    assert _exists(pg_dsn, "gold.b_synced")
    assert not _exists(pg_dsn, "gold.a_synced")


def test_the_component_loads_synced_tables_from_yaml(tmp_path: Path, pg_dsn: str) -> None:
    write_delta(tmp_path / "lake" / "analytics" / "gold" / "t", ROWS)
    component_dir = tmp_path / "defs" / "synced"
    component_dir.mkdir(parents=True)
    (component_dir / "defs.yaml").write_text(
        f"""
type: reverse_etl_assets.orchestration.component.SyncedTablesComponent
attributes:
  lake_root: {tmp_path / "lake"}
  synced_tables:
    - name: lakebase.gold.t_synced
      source: analytics.gold.t
      primary_key: [id]
      schedule: "0 * * * *"
"""
    )

    declared = yaml.safe_load((component_dir / "defs.yaml").read_text())
    module, _, name = declared["type"].rpartition(".")
    assert getattr(importlib.import_module(module), name) is SyncedTablesComponent
    context = dg.ComponentTree.for_test().load_context.for_path(component_dir)
    component = SyncedTablesComponent.from_attributes_dict(
        attributes=declared["attributes"], context=context
    )
    defs = component.build_defs(context)

    graph = defs.resolve_asset_graph()
    key = dg.AssetKey(["lakebase", "gold", "t_synced"])
    assert graph.get(key).parent_keys == {dg.AssetKey(["analytics", "gold", "t"])}
    assert graph.get(key).automation_condition is not None
    result = dg.materialize(
        [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition)],
        selection=[key],
        resources=postgres_resources(pg_dsn),
    )
    assert result.success
    assert _exists(pg_dsn, "gold.t_synced")


class _Holding(dg.IOManager):
    """An IO manager that keeps what it is handed and writes nothing."""

    def __init__(self) -> None:
        self.held: list[Any] = []

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        self.held.append(obj)

    def load_input(self, context: dg.InputContext) -> Any:
        raise NotImplementedError


def test_the_asset_reads_and_the_postgres_io_manager_writes(two_tables: Spec, pg_dsn: str) -> None:
    defs = build_definitions(two_tables)
    assets = [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition)]
    key = dg.AssetKey(["lb", "gold", "a_synced"])
    holding = _Holding()

    result = dg.materialize(
        assets,
        selection=[key],
        resources={
            "postgres": PostgresTarget(dsn=pg_dsn),
            "postgres_io_manager": dg.IOManagerDefinition.hardcoded_io_manager(holding),
        },
    )

    assert result.success
    [pending] = holding.held
    assert isinstance(pending, PendingSync)
    assert (pending.plan.path, pending.plan.version) == ("snapshot", 0)
    assert "dsn" not in repr(pending)
    # The asset only read: no table, no checkpoint.
    assert not _exists(pg_dsn, "gold.a_synced")
    with psycopg.connect(pg_dsn) as conn:
        assert read_state(conn, "lb.gold.a_synced") is None

    context = dg.build_output_context(asset_key=key)
    PostgresTableIOManager(dsn=pg_dsn).handle_output(context, pending)

    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT id, name FROM gold.a_synced ORDER BY id").fetchall()
        stored = read_state(conn, "lb.gold.a_synced")
    assert rows == [(1, "a"), (2, "b"), (3, "c")]
    assert stored is not None and stored.last_synced_version == 0
    assert context.get_logged_metadata()["dagster/row_count"].value == 3


def test_a_transient_error_is_retried_and_a_terminal_one_fails_with_what_to_do(
    two_tables: Spec, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    defs = build_definitions(two_tables)
    assets = [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition)]
    key = dg.AssetKey(["lb", "gold", "a_synced"])
    real_land = io_manager_module.land_sync
    calls: list[int] = []

    def land_after_another_sync(plan: Any, dsn: str, **kwargs: Any) -> Any:
        """Another sync (the CLI, say) lands first, moving the checkpoint the plan started from."""
        calls.append(1)
        if len(calls) == 1:
            sync_table(plan.table, dsn)
        return real_land(plan, dsn, **kwargs)

    monkeypatch.setattr(io_manager_module, "land_sync", land_after_another_sync)
    monkeypatch.setattr(failures_module, "RETRY_SECONDS", 0.0)
    result = dg.materialize(assets, selection=[key], resources=postgres_resources(pg_dsn))
    assert result.success
    assert len(calls) == 2  # the stale plan wrote nothing; the step re-planned and landed
    assert any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    [event] = result.get_asset_materialization_events()
    metadata = event.step_materialization_data.materialization.metadata
    assert metadata["reverse_etl/sync_path"].value == "none"  # the other sync did the copy

    monkeypatch.setattr(io_manager_module, "land_sync", real_land)
    write_delta(Path(two_tables.synced_tables[0].source), ROWS.slice(0, 1))  # a duplicate key
    failed = dg.materialize(
        assets,
        selection=[key],
        resources=postgres_resources(pg_dsn),
        raise_on_error=False,
    )
    assert not failed.success
    [failure] = failed.get_step_failure_events()
    data = failure.step_failure_data
    assert data.user_failure_data is not None
    assert "duplicate primary key" in (data.user_failure_data.description or "")
    assert "reverse_etl/what_to_do" in data.user_failure_data.metadata


class ManualChecks(SyncedTableTranslator):
    """A user's translator that runs the equality checks only when asked."""

    def get_check_automation_condition(self, table: SyncedTable) -> dg.AutomationCondition | None:
        return None


def test_a_translator_can_leave_checks_to_a_click(two_tables: Spec) -> None:
    automatic = build_definitions(two_tables).resolve_asset_graph()
    manual = build_definitions(two_tables, ManualChecks()).resolve_asset_graph()
    for graph, expected in ((automatic, True), (manual, False)):
        assert graph.asset_check_keys
        for key in graph.asset_check_keys:
            has_condition = graph.get_check_spec(key).automation_condition is not None
            assert has_condition is expected, key
