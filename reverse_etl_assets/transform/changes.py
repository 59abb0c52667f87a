"""Reduce raw Change Data Feed rows to one net change per key: the rows to upsert and to delete.

Order by commit version; inside a version deletes come before inserts; update_preimage is
dropped; the last change per key wins (DESIGN §5 rule 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from reverse_etl_assets.delta.change_feed import (
    CHANGE_TYPE,
    COMMIT_VERSION,
    DELETE,
    UPDATE_PREIMAGE,
)
from reverse_etl_assets.errors import DataError

_ORDER = "__retl_order"
_ROW = "__retl_row"


@dataclass(frozen=True, kw_only=True)
class NetChanges:
    """What a range of versions does to the synced table."""

    upserts: pa.Table  # full rows, source columns only
    deletes: pa.Table  # key columns only
    skipped_null_keys: int

    @property
    def count(self) -> int:
        """Keys touched."""
        return self.upserts.num_rows + self.deletes.num_rows


def net_changes(
    changes: pa.Table,
    *,
    key: tuple[str, ...],
    columns: list[str],
    timeseries_key: str | None,
    table: str,
) -> NetChanges:
    """One net change per key; two new rows for one key in one version is a duplicate key.

    The ordering works on a narrow frame (keys, change type, version, row number); the wide rows
    are taken from the Arrow table once, at the end, so memory stays near the feed's own size.
    """
    narrow = [*key, CHANGE_TYPE, COMMIT_VERSION]
    if timeseries_key is not None:
        narrow.append(timeseries_key)
    frame = pl.from_arrow(changes.select(narrow), rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_row_index(_ROW).filter(pl.col(CHANGE_TYPE) != UPDATE_PREIMAGE)
    has_null_key = pl.any_horizontal([pl.col(k).is_null() for k in key])
    skipped = frame.filter(has_null_key).height
    frame = frame.filter(~has_null_key).with_columns(
        pl.when(pl.col(CHANGE_TYPE) == DELETE).then(0).otherwise(1).alias(_ORDER)
    )
    frame = _resolve_duplicates(frame, key=key, timeseries_key=timeseries_key, table=table)
    last = frame.sort([COMMIT_VERSION, _ORDER], maintain_order=True).unique(
        subset=list(key), keep="last", maintain_order=True
    )
    is_delete = pl.col(CHANGE_TYPE) == DELETE
    wide = pl.from_arrow(changes.select(columns), rechunk=False)
    assert isinstance(wide, pl.DataFrame)
    return NetChanges(
        upserts=wide[last.filter(~is_delete).get_column(_ROW)].to_arrow(),
        deletes=wide.select(list(key))[last.filter(is_delete).get_column(_ROW)].to_arrow(),
        skipped_null_keys=skipped,
    )


def _resolve_duplicates(
    frame: pl.DataFrame, *, key: tuple[str, ...], timeseries_key: str | None, table: str
) -> pl.DataFrame:
    """Several new rows for one key in one version: keep the latest by `timeseries_key`, or fail."""
    new_rows = pl.col(_ORDER) == 1
    per_version = [*key, COMMIT_VERSION]
    counts = frame.filter(new_rows).group_by(per_version).len()
    duplicated = counts.filter(pl.col("len") > 1)
    if duplicated.is_empty():
        return frame
    if timeseries_key is None:
        samples = ", ".join(
            f"{ {k: row[k] for k in key} } x{row['len']} in version {row[COMMIT_VERSION]}"
            for row in duplicated.head(5).iter_rows(named=True)
        )
        raise DataError(
            f"synced table {table!r}: duplicate primary key {list(key)} in the source, e.g. "
            f"{samples}; declare a `timeseries_key` to keep the latest row per key, or fix the "
            "source. Nothing was changed in Postgres"
        )
    ranked = frame.with_columns(
        pl.col(timeseries_key)
        .rank("dense", descending=True)
        .over([*per_version, _ORDER])
        .alias("__retl_rank")
    )
    ties = ranked.filter(new_rows & (pl.col("__retl_rank") == 1)).group_by(per_version).len()
    tied = ties.filter(pl.col("len") > 1)
    if not tied.is_empty():
        sample = {k: tied.row(0, named=True)[k] for k in key}
        raise DataError(
            f"synced table {table!r}: duplicate primary key {list(key)} in the source, e.g. "
            f"{sample}: rows with the same key share the latest timeseries_key value"
        )
    return ranked.filter(~new_rows | (pl.col("__retl_rank") == 1)).drop("__retl_rank")
