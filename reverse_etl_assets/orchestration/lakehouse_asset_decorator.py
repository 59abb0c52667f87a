"""`@lakehouse_sync_assets`: the history and mirror Delta tables of one lakehouse sync as one
multi-asset, the way `@synced_table_assets` exposes synced tables.

    @lakehouse_sync_assets(sync=load_spec("synced_tables.yaml").lakehouse_sync("app"))
    def app(context: dg.AssetExecutionContext, lakehouse: LakehouseSyncResource):
        yield from lakehouse.sync(context)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dagster as dg

from reverse_etl_assets.orchestration.asset_decorator import DEFAULT_POOL
from reverse_etl_assets.orchestration.lakehouse_translator import (
    LakehouseSyncTranslator,
    LakehouseTable,
    lakehouse_tables,
)
from reverse_etl_assets.spec import LakehouseSync

# The Delta table and the translator ride along in each AssetSpec's metadata, so the resource
# knows what the step stands for (as for synced tables).
METADATA_KEY_TABLE = "reverse_etl/lakehouse_table"
METADATA_KEY_TRANSLATOR = "reverse_etl/lakehouse_translator"


def lakehouse_sync_asset_specs(
    sync: LakehouseSync, translator: LakehouseSyncTranslator | None = None
) -> list[dg.AssetSpec]:
    """The AssetSpec of each history and mirror of `sync`, carrying what the run needs."""
    translator = translator or LakehouseSyncTranslator()
    return [
        translator.get_asset_spec(table).merge_attributes(
            metadata={METADATA_KEY_TABLE: table, METADATA_KEY_TRANSLATOR: translator}
        )
        for table in lakehouse_tables(sync)
    ]


def lakehouse_sync_assets(
    *,
    sync: LakehouseSync,
    translator: LakehouseSyncTranslator | None = None,
    name: str | None = None,
    pool: str | None = DEFAULT_POOL,
    op_tags: dict[str, Any] | None = None,
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """A multi-asset over the Delta tables of `sync`, materialized together."""
    return dg.multi_asset(
        name=name or f"lakehouse_sync__{sync.name}",
        specs=lakehouse_sync_asset_specs(sync, translator),
        # Not subsettable: one replication slot feeds every table of the sync, and draining it
        # for one table would acknowledge (and so lose for the others) the changes of all.
        can_subset=False,
        pool=pool,
        op_tags=op_tags,
    )


def lakehouse_table_of(spec: dg.AssetSpec) -> LakehouseTable:
    """The Delta table an AssetSpec made by `lakehouse_sync_asset_specs` stands for."""
    table = spec.metadata[METADATA_KEY_TABLE]
    assert isinstance(table, LakehouseTable)
    return table
