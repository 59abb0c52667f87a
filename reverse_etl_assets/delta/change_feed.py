"""Read the Delta Change Data Feed of a version range, whole, before anything is written.

delta-rs raises errors (a vacuumed file, say) only while iterating, so the range is read to the
end here; an error means the increment is impossible, never "no changes".
"""

from __future__ import annotations

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from reverse_etl_assets.delta.log import RangeUnavailable

CHANGE_TYPE = "_change_type"
COMMIT_VERSION = "_commit_version"
COMMIT_TIMESTAMP = "_commit_timestamp"
# The columns delta-rs adds to every CDF row; a source column may not use these names.
CDF_COLUMNS = frozenset({CHANGE_TYPE, COMMIT_VERSION, COMMIT_TIMESTAMP})
# The values of CHANGE_TYPE.
INSERT = "insert"
DELETE = "delete"
UPDATE_PREIMAGE = "update_preimage"
UPDATE_POSTIMAGE = "update_postimage"


def read_changes(table: DeltaTable, *, start: int, end: int) -> pa.Table:
    """Every CDF row of versions `start..end` (unordered, as delta-rs returns them)."""
    try:
        reader = table.load_cdf(starting_version=start, ending_version=end)
        return pa.RecordBatchReader.from_stream(reader).read_all()
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise RangeUnavailable(
            f"reading the Change Data Feed of versions {start}..{end} failed: {exc}"
        ) from exc
