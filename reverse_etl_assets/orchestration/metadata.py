"""Metadata keys and tags of materializations and observations, in one place.

Dagster's standard keys come from `TableMetadataSet`; ours live under `reverse_etl/`.
"""

from __future__ import annotations

ROW_COUNT = "dagster/row_count"
DELTA_VERSION = "reverse_etl/delta_version"
SOURCE = "reverse_etl/source"
MODE = "reverse_etl/mode"
SYNC_PATH = "reverse_etl/sync_path"
ROWS_PER_SECOND = "reverse_etl/rows_per_second"
DURATION_SECONDS = "reverse_etl/duration_seconds"
SKIPPED_NULL_KEYS = "reverse_etl/skipped_null_keys"
DETAILED_STATE = "reverse_etl/detailed_state"
MESSAGE = "reverse_etl/message"
POSTGRES_TABLE = "reverse_etl/postgres_table"
CHANGES = "reverse_etl/changed_keys"
REASON = "reverse_etl/reason"
ESTIMATED_SECONDS = "reverse_etl/estimated_seconds"  # {"snapshot": s, "incremental": s}
LAG_VERSIONS = "reverse_etl/lag_versions"

# Dagster's standard table metadata (dagster/row_count, dagster/table_name,
# dagster/column_schema); not re-exported at the top level of dagster 1.13.
from dagster._core.definitions.metadata import TableMetadataSet  # noqa: E402

__all__ = ["TableMetadataSet"]
