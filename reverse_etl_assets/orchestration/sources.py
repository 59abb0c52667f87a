"""The Delta sources of synced tables as observable assets: the data version is the Delta
version, observed on the cron the translator gives (once a minute by default)."""

import warnings
from collections.abc import Iterable, Iterator

import dagster as dg

from reverse_etl_assets.delta.reader import open_source
from reverse_etl_assets.orchestration import metadata as md
from reverse_etl_assets.orchestration.translator import SyncedTableTranslator
from reverse_etl_assets.spec import SyncedTable


def delta_source_assets(
    tables: Iterable[SyncedTable],
    translator: SyncedTableTranslator | None = None,
    *,
    name: str = "observe_delta_sources",
) -> dg.AssetsDefinition:
    """One subsettable observable asset over the distinct sources of `tables`."""
    translator = translator or SyncedTableTranslator()
    by_key: dict[dg.AssetKey, tuple[dg.AssetSpec, SyncedTable]] = {}
    for table in tables:
        spec = translator.get_source_spec(table)
        by_key.setdefault(spec.key, (spec, table))

    # Observable assets are still marked beta in Dagster 1.13; the API is the documented way
    # to give a source a data version, so its warning is not news to our users at every start.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)

        @dg.multi_observable_source_asset(
            name=name, specs=[spec for spec, _ in by_key.values()], can_subset=True
        )
        def _observe(context: dg.AssetExecutionContext) -> Iterator[dg.ObserveResult]:
            for key in context.selected_asset_keys:
                table = by_key[key][1]
                source = open_source(table.source_uri, storage_options=table.storage_options)
                yield dg.ObserveResult(
                    asset_key=key,
                    data_version=dg.DataVersion(str(source.version)),
                    metadata={md.DELTA_VERSION: source.version, md.SOURCE: table.source_uri},
                )

    return _observe
