"""`@synced_table_assets`: the synced tables of a spec as one subsettable multi-asset, the way
`@dlt_assets` / `@sling_assets` expose theirs.

    @synced_table_assets(spec=load_spec("synced_tables.yaml"))
    def synced_tables(context: dg.AssetExecutionContext, postgres: PostgresTarget):
        yield from postgres.read_sources(context)

The body reads (each table's checkpoint and pinned Delta source); the Postgres IO manager
(resource key `postgres_io_manager`) writes, with the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import dagster as dg

from reverse_etl_assets.orchestration.translator import SyncedTableTranslator
from reverse_etl_assets.spec import Spec, SyncedTable

# The spec entry and the translator ride along in each AssetSpec's metadata, so the resource
# knows what to sync for whichever subset a run selects (as dagster-sling does).
METADATA_KEY_TABLE = "reverse_etl/synced_table"
METADATA_KEY_TRANSLATOR = "reverse_etl/translator"
# Every sync into one Postgres claims a slot of this Dagster concurrency pool; its limit times
# the tables' `max_connections` bounds the connections all syncs open at once.
DEFAULT_POOL = "reverse_etl_postgres"
# The resource key of the IO manager that lands what a synced-table asset returns.
IO_MANAGER_KEY = "postgres_io_manager"


def synced_table_asset_specs(
    tables: Iterable[SyncedTable], translator: SyncedTableTranslator | None = None
) -> list[dg.AssetSpec]:
    """The AssetSpec of each synced table, from `translator`, carrying what the sync needs."""
    translator = translator or SyncedTableTranslator()
    return [
        translator.get_asset_spec(table)
        .merge_attributes(metadata={METADATA_KEY_TABLE: table, METADATA_KEY_TRANSLATOR: translator})
        .with_io_manager_key(IO_MANAGER_KEY)
        for table in tables
    ]


def synced_table_assets(
    *,
    spec: Spec | Iterable[SyncedTable],
    translator: SyncedTableTranslator | None = None,
    name: str | None = None,
    pool: str | None = DEFAULT_POOL,
    op_tags: dict[str, Any] | None = None,
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """A multi-asset over the synced tables of `spec` (all modes); any subset can run alone."""
    tables = spec.synced_tables if isinstance(spec, Spec) else tuple(spec)
    return dg.multi_asset(
        name=name,
        specs=synced_table_asset_specs(tables, translator),
        can_subset=True,
        pool=pool,
        op_tags=op_tags,
    )


def synced_table_of(spec: dg.AssetSpec) -> SyncedTable:
    """The spec entry an AssetSpec made by `synced_table_asset_specs` stands for."""
    table = spec.metadata[METADATA_KEY_TABLE]
    assert isinstance(table, SyncedTable)
    return table


def translator_of(spec: dg.AssetSpec) -> SyncedTableTranslator:
    """The translator an AssetSpec made by `synced_table_asset_specs` came from."""
    translator = spec.metadata[METADATA_KEY_TRANSLATOR]
    assert isinstance(translator, SyncedTableTranslator)
    return translator
