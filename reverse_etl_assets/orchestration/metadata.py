"""Metadata keys of materializations and observations, in one place."""

from __future__ import annotations

ROW_COUNT = "dagster/row_count"
DELTA_VERSION = "delta_version"
SOURCE = "source"
MODE = "mode"
SYNC_PATH = "sync_path"
ROWS_PER_SECOND = "rows_per_second"
DURATION_SECONDS = "duration_seconds"
SKIPPED_NULL_KEYS = "skipped_null_keys"
DETAILED_STATE = "detailed_state"
POSTGRES_TABLE = "postgres_table"
CHANGES = "changed_keys"
REASON = "reason"
