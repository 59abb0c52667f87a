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
# The tag of a follower run: the name of the synced table or lakehouse sync it follows.
FOLLOWER = "reverse_etl/follower"

# Lakehouse syncs (Postgres -> Delta): one history / mirror Delta table of a Postgres table.
DELTA_TABLE = "reverse_etl/delta_table"
SLOT = "reverse_etl/slot"
LAST_LSN = "reverse_etl/last_lsn"
LAG_BYTES = "reverse_etl/lag_bytes"
LAG_SECONDS = "reverse_etl/lag_seconds"
RETAINED_WAL_BYTES = "reverse_etl/retained_wal_bytes"
ROWS_APPENDED = "reverse_etl/rows_appended"
SNAPSHOT_ROWS = "reverse_etl/snapshot_rows"
# Changes landed, by `_pg_change_type` (an update counts once, by its postimage).
INSERTS = "reverse_etl/inserts"
UPDATES = "reverse_etl/updates"
DELETES = "reverse_etl/deletes"
TRUNCATES = "reverse_etl/truncates"

# Dagster's standard table metadata (dagster/row_count, dagster/table_name,
# dagster/column_schema); not re-exported at the top level of dagster 1.13.
from dagster._core.definitions.metadata import TableMetadataSet  # noqa: E402

__all__ = ["TableMetadataSet"]
