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
from reverse_etl_assets.errors import TransientError
from reverse_etl_assets.orchestration import resources as resources_module
from reverse_etl_assets.orchestration.asset_decorator import synced_table_assets
from reverse_etl_assets.orchestration.component import SyncedTablesComponent
from reverse_etl_assets.orchestration.resources import PostgresTarget
from reverse_etl_assets.orchestration.translator import SyncedTableTranslator
from reverse_etl_assets.spec import Spec, SyncedTable
from reverse_etl_assets_tests.helpers import spec_of, write_delta

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
        resources={"postgres": PostgresTarget(dsn=pg_dsn)},
    )
    assert result.success
    assert [e.asset_key for e in result.get_asset_materialization_events()] == [key]


def test_the_decorator_builds_a_multi_asset_that_runs_any_subset(
    two_tables: Spec, pg_dsn: str
) -> None:
    @synced_table_assets(spec=two_tables, name="my_tables")
    def my_tables(context: dg.AssetExecutionContext, postgres: PostgresTarget) -> Any:
        yield from postgres.sync(context)

    assert my_tables.can_subset
    assert my_tables.op.pool == "reverse_etl_postgres"
    a, b = dg.AssetKey(["lb", "gold", "a_synced"]), dg.AssetKey(["lb", "gold", "b_synced"])
    assert set(my_tables.keys) == {a, b}

    result = dg.materialize(
        [my_tables], selection=[b], resources={"postgres": PostgresTarget(dsn=pg_dsn)}
    )

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
        resources={"postgres": PostgresTarget(dsn=pg_dsn)},
    )
    assert result.success
    assert _exists(pg_dsn, "gold.t_synced")


def test_a_transient_error_is_retried_and_a_terminal_one_fails_with_what_to_do(
    two_tables: Spec, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    defs = build_definitions(two_tables)
    assets = [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition)]
    key = dg.AssetKey(["lb", "gold", "a_synced"])
    real_sync = resources_module.sync_table
    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise TransientError("lock held by a reader (simulated)")
        return real_sync(*args, **kwargs)

    monkeypatch.setattr(resources_module, "sync_table", flaky)
    monkeypatch.setattr(resources_module, "RETRY_SECONDS", 0.0)
    result = dg.materialize(
        assets, selection=[key], resources={"postgres": PostgresTarget(dsn=pg_dsn)}
    )
    assert result.success
    assert len(calls) == 2
    assert any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)

    monkeypatch.setattr(resources_module, "sync_table", real_sync)
    write_delta(Path(two_tables.synced_tables[0].source), ROWS.slice(0, 1))  # a duplicate key
    failed = dg.materialize(
        assets,
        selection=[key],
        resources={"postgres": PostgresTarget(dsn=pg_dsn)},
        raise_on_error=False,
    )
    assert not failed.success
    [failure] = failed.get_step_failure_events()
    data = failure.step_failure_data
    assert data.user_failure_data is not None
    assert "duplicate primary key" in (data.user_failure_data.description or "")
    assert "reverse_etl/what_to_do" in data.user_failure_data.metadata
