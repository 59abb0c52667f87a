"""A `dg` component: synced tables declared in a project's `defs.yaml`, with the keys of the
spec file (DESIGN §3), built into the same assets, checks and sensors as the code location.

    type: reverse_etl_assets.orchestration.component.SyncedTablesComponent
    attributes:
      lake_root: data/lake
      synced_tables:
        - name: lakebase.gold.user_profiles_synced
          source: analytics.gold.user_profiles
          primary_key: [user_id]
"""

from typing import Any

import dagster as dg

from reverse_etl_assets.definitions import build_definitions
from reverse_etl_assets.spec import parse_spec


class SyncedTablesComponent(dg.Component, dg.Model, dg.Resolvable):
    """Synced tables (Delta → Postgres) as Dagster assets; relative paths resolve against the
    folder of the component's `defs.yaml`."""

    synced_tables: list[dict[str, Any]]
    lake_root: str | None = None

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        raw: dict[str, Any] = {"synced_tables": self.synced_tables}
        if self.lake_root is not None:
            raw["lake_root"] = self.lake_root
        return build_definitions(parse_spec(raw, path=context.path / "defs.yaml"))
