"""The columns delta-rs adds to every Change Data Feed row, and the values of its change type."""

from __future__ import annotations

CHANGE_TYPE = "_change_type"
COMMIT_VERSION = "_commit_version"
COMMIT_TIMESTAMP = "_commit_timestamp"
# A source column may not use these names.
CDF_COLUMNS = frozenset({CHANGE_TYPE, COMMIT_VERSION, COMMIT_TIMESTAMP})
# The values of CHANGE_TYPE.
INSERT = "insert"
DELETE = "delete"
UPDATE_PREIMAGE = "update_preimage"
UPDATE_POSTIMAGE = "update_postimage"
# Not delta-rs's: a postimage whose preimage (same key, same change file) was left out of the
# feed (see `delta.preimages`). It updates a row that was there; every other arriving row may add
# one (an insert, or an update that moved a row to another key).
PAIRED_POSTIMAGE = "update_postimage_paired"
