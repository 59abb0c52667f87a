"""The spec file parsed into frozen dataclasses and checked: synced tables and lakehouse syncs.

The only parsed form of the YAML; everything else reads these dataclasses.
"""

from reverse_etl_assets.spec.synced_tables import (
    THREE_PART,
    Spec,
    SyncedTable,
    load_spec,
    parse_spec,
    resolve_source,
)

__all__ = ["THREE_PART", "Spec", "SyncedTable", "load_spec", "parse_spec", "resolve_source"]
