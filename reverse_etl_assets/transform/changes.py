"""Reduce raw Change Data Feed rows to one net change per key: the rows to upsert and to delete.

Order by commit version; inside a version the rows that leave (deletes and update preimages)
come before the rows that arrive (inserts and update postimages); the last change per key wins.
A preimage is the row as it was before an update: when the update changed the key, nothing
arrives under the old key, so the old key ends deleted (DESIGN §5 rule 3, for key changes).

With a `timeseries_key` the synced table holds the latest remaining row per key. A range that
only adds rows is reduced here (the latest new row per key, which replaces the stored row only
when newer). A range that removes rows (a delete, an update, an overwrite) can leave a key with
an older row the feed does not carry: those keys are returned unresolved, for the caller to read
their remaining rows at the range's last version (`resolve_latest`).
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
_LATEST = "__retl_latest"
# Change types of rows that leave the table (order 0 inside a version); the others arrive.
_LEAVING = (DELETE, UPDATE_PREIMAGE)


@dataclass(frozen=True, kw_only=True)
class NetChanges:
    """What a range of versions does to the synced table."""

    upserts: pa.Table  # full rows, source columns only
    deletes: pa.Table  # key columns only
    # How the number of NULL-key rows (never synced, counted in the status) changed over the
    # range: rows arriving minus rows leaving.
    null_key_rows: int = 0
    # Timeseries appends: an upsert replaces the stored row only when it is at least as recent.
    newer_only: bool = False
    # Timeseries keys whose remaining rows must be read from the source (key columns only).
    unresolved: pa.Table | None = None

    @property
    def count(self) -> int:
        """Keys touched."""
        pending = self.unresolved.num_rows if self.unresolved is not None else 0
        return self.upserts.num_rows + self.deletes.num_rows + pending


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
    leaving = pl.col(CHANGE_TYPE).is_in(_LEAVING)
    frame = frame.with_row_index(_ROW).with_columns(
        pl.when(leaving).then(0).otherwise(1).alias(_ORDER)
    )
    has_null_key = pl.any_horizontal([pl.col(k).is_null() for k in key])
    null_rows = frame.filter(has_null_key)
    null_key_rows = null_rows.height - 2 * int(null_rows.get_column(_ORDER).eq(0).sum())
    frame = frame.filter(~has_null_key)
    if timeseries_key is not None:
        return _timeseries_changes(
            frame,
            changes,
            key=key,
            columns=columns,
            timeseries_key=timeseries_key,
            table=table,
            null_key_rows=null_key_rows,
        )
    _refuse_duplicates(frame, key=key, table=table)
    last = frame.sort([COMMIT_VERSION, _ORDER], maintain_order=True).unique(
        subset=list(key), keep="last", maintain_order=True
    )
    is_leaving = pl.col(_ORDER) == 0
    wide = pl.from_arrow(changes.select(columns), rechunk=False)
    assert isinstance(wide, pl.DataFrame)
    return NetChanges(
        upserts=wide[last.filter(~is_leaving).get_column(_ROW)].to_arrow(),
        deletes=wide.select(list(key))[last.filter(is_leaving).get_column(_ROW)].to_arrow(),
        null_key_rows=null_key_rows,
    )


def resolve_latest(
    net: NetChanges,
    remaining: pa.Table,
    *,
    key: tuple[str, ...],
    timeseries_key: str,
    table: str,
) -> NetChanges:
    """The unresolved keys of `net` settled from `remaining`, the source rows of those keys at
    the range's last version (a superset is fine): the latest row per key is upserted as it is
    (not only when newer: the stored row may be gone), a key with no row left is deleted."""
    assert net.unresolved is not None
    names = list(key)
    keys = pl.from_arrow(net.unresolved)
    rows = pl.from_arrow(remaining.select([*names, timeseries_key]))
    assert isinstance(keys, pl.DataFrame) and isinstance(rows, pl.DataFrame)
    rows = rows.with_row_index(_ROW).join(keys, on=names, how="semi")
    latest = _latest_rows(rows, key=key, timeseries_key=timeseries_key, table=table)
    gone = keys.with_row_index(_ROW).join(latest.select(names), on=names, how="anti")
    return NetChanges(
        upserts=remaining.take(latest.get_column(_ROW).to_arrow()),
        deletes=net.unresolved.take(gone.get_column(_ROW).to_arrow()),
        null_key_rows=net.null_key_rows,
    )


def _timeseries_changes(
    frame: pl.DataFrame,
    changes: pa.Table,
    *,
    key: tuple[str, ...],
    columns: list[str],
    timeseries_key: str,
    table: str,
    null_key_rows: int,
) -> NetChanges:
    """Appends only: the latest new row per key over the whole range (not the last version's:
    a late event may be older). Anything removed: the touched keys, unresolved."""
    wide = pl.from_arrow(changes.select(columns), rechunk=False)
    assert isinstance(wide, pl.DataFrame)
    empty_keys = wide.select(list(key)).head(0).to_arrow()
    if frame.get_column(_ORDER).eq(0).any():
        touched = frame.unique(list(key), keep="first", maintain_order=True).get_column(_ROW)
        return NetChanges(
            upserts=wide.head(0).to_arrow(),
            deletes=empty_keys,
            null_key_rows=null_key_rows,
            unresolved=wide.select(list(key))[touched].to_arrow(),
        )
    latest = _latest_rows(frame, key=key, timeseries_key=timeseries_key, table=table)
    return NetChanges(
        upserts=wide[latest.get_column(_ROW)].to_arrow(),
        deletes=empty_keys,
        null_key_rows=null_key_rows,
        newer_only=True,
    )


def _latest_rows(
    frame: pl.DataFrame, *, key: tuple[str, ...], timeseries_key: str, table: str
) -> pl.DataFrame:
    """The latest row per key by `timeseries_key` (NULLs last, as the snapshot path ranks);
    two rows sharing a key's latest value are a duplicate key, as in a snapshot."""
    newest = pl.col(timeseries_key).max().over(list(key))
    is_latest = ((pl.col(timeseries_key) == newest) | newest.is_null()).fill_null(False)
    latest = frame.filter(is_latest)
    ties = latest.group_by(list(key)).len().filter(pl.col("len") > 1)
    if not ties.is_empty():
        sample = {k: ties.row(0, named=True)[k] for k in key}
        raise DataError(
            f"synced table {table!r}: duplicate primary key {list(key)} in the source, e.g. "
            f"{sample}: rows with the same key share the latest timeseries_key value. Nothing "
            "was changed in Postgres"
        )
    return latest


def _refuse_duplicates(frame: pl.DataFrame, *, key: tuple[str, ...], table: str) -> None:
    """Several new rows for one key in one version (without a `timeseries_key`): fail."""
    per_version = [*key, COMMIT_VERSION]
    counts = frame.filter(pl.col(_ORDER) == 1).group_by(per_version).len()
    duplicated = counts.filter(pl.col("len") > 1)
    if duplicated.is_empty():
        return
    samples = ", ".join(
        f"{ {k: row[k] for k in key} } x{row['len']} in version {row[COMMIT_VERSION]}"
        for row in duplicated.head(5).iter_rows(named=True)
    )
    raise DataError(
        f"synced table {table!r}: duplicate primary key {list(key)} in the source, e.g. "
        f"{samples}; declare a `timeseries_key` to keep the latest row per key, or fix the "
        "source. Nothing was changed in Postgres"
    )
