"""The spec file parsed into frozen dataclasses and checked: synced tables and lakehouse syncs.

The only parsed form of the YAML; everything else reads these dataclasses.
"""

from reverse_etl_assets.spec.file import Spec, load_spec, parse_spec
from reverse_etl_assets.spec.lakehouse_syncs import LakehouseSync
from reverse_etl_assets.spec.synced_tables import THREE_PART, SyncedTable, resolve_source

__all__ = [
    "THREE_PART",
    "LakehouseSync",
    "Spec",
    "SyncedTable",
    "load_spec",
    "parse_spec",
    "resolve_source",
]
