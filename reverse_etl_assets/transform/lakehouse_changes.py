"""Reduce a frame of Postgres logical-replication changes to history rows and mirror changes.

Pure Arrow/polars: no I/O. The Delta writer applies what this module returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

CHANGE_TYPE = "_pg_change_type"
LSN = "_pg_lsn"
SEQ = "_pg_seq"
XID = "_pg_xid"
COMMIT_TIME = "_pg_commit_time"
UNCHANGED = "_pg_unchanged"
META_COLUMNS = (CHANGE_TYPE, LSN, SEQ, XID, COMMIT_TIME, UNCHANGED)

OP = "_op"
KEEP_PREFIX = "_keep_"

# Working columns; the leading "__" keeps them apart from any Postgres column name we could meet
# (Postgres allows such names, but the frame contract never carries them).
_ORD = "__ord"
_RANK = "__rank"
_PRIOR = "__prior"
_LIFE = "__life"
_LAST_SEQ = 2**31 - 1  # after every change of a transaction
_HAS_PRE = "__has_pre"


@dataclass(frozen=True, kw_only=True)
class MirrorChanges:
    """The last change per key of one frame, ready for one Delta MERGE into the mirror."""

    # table columns + `_op` ('upsert' | 'delete' | 'fill') + one bool `_keep_<col>` per column whose
    # target value must be kept (unchanged TOAST the frame could not fill), only where needed
    rows: pa.Table
    # a truncate happened in the frame: target rows not in `rows` are deleted
    clear_first: bool
    # columns that rows with `_op` 'fill' set on target rows the frame does not otherwise touch
    fill_columns: tuple[str, ...] = ()
    # column -> SQL constant the MERGE sets on every target row `rows` does not match (no rows
    # needed for them: what `fill` rows do, for values a SQL literal can state)
    untouched: tuple[tuple[str, str], ...] = ()


def table_columns(frame: pa.Table) -> list[str]:
    """The Postgres table's own columns of a frame, in frame order."""
    return [name for name in frame.column_names if name not in META_COLUMNS]


def keep_column(column: str) -> str:
    """Name of the flag column telling the merge to keep the target's value of `column`."""
    return f"{KEEP_PREFIX}{column}"


def history_rows(frame: pa.Table) -> pa.Table:
    """The frame without `_pg_unchanged`: what the history table stores."""
    if UNCHANGED not in frame.column_names:
        return frame
    return frame.drop_columns([UNCHANGED])


def unfilled_keys(frame: pa.Table, key_columns: Sequence[str]) -> pa.Table:
    """Keys whose current mirror row `fill_unchanged(prior=...)` may need: a superset, deduplicated.

    Keys of postimages with unchanged-TOAST columns and, for a key change, the old key (the
    value lives in the mirror under the old key).
    """
    keys = list(key_columns)
    df = _sorted(frame)
    partial = df.filter(pl.col(UNCHANGED).list.len().fill_null(0) > 0).select(LSN, SEQ, *keys)
    olds = df.filter(pl.col(CHANGE_TYPE) == "update_preimage").join(
        partial.select(LSN, SEQ), on=[LSN, SEQ], how="semi"
    )
    found = pl.concat([partial.select(keys), olds.select(keys)]).unique(maintain_order=True)
    return found.to_arrow().cast(frame.select(keys).schema)


def unchanged_columns(frame: pa.Table) -> list[str]:
    """The table columns some postimage of `frame` left unsent (named in `_pg_unchanged`)."""
    if UNCHANGED not in frame.column_names:
        return []
    named = set(pc.list_flatten(frame[UNCHANGED]).drop_null().to_pylist())
    return [c for c in table_columns(frame) if c in named]


def fill_unchanged(
    frame: pa.Table,
    key_columns: Sequence[str],
    *,
    prior: pa.Table | None,
    prior_lsn: int | None = None,
) -> pa.Table:
    """Fill unchanged-TOAST values of postimages; `_pg_unchanged` keeps only what stays unknown.

    Sources, in order: (a) the preimage of the same change (REPLICA IDENTITY FULL), (b) the latest
    earlier event of the same key in the frame that carried the value (following key changes),
    (c) `prior`: the current mirror rows for the keys concerned (see `unfilled_keys`), as of
    `prior_lsn` (the mirror's version: the frame's changes up to it are in those rows already;
    None: before every change of the frame).
    Returns the rows in the frame's order with the frame's schema.
    """
    df = _sorted(frame)
    columns = _unchanged_columns(df)
    if not columns:
        return frame
    if prior is not None and prior.num_rows:
        df = _with_prior(df, prior, key_columns, columns, lsn=prior_lsn)
    df = _fill(df, list(key_columns), columns)
    if _PRIOR in df.columns:
        df = df.filter(~pl.col(_PRIOR)).drop(_PRIOR)
    df = df.with_columns(_remaining_unchanged(columns)).sort(_ORD)
    return _to_arrow(df.drop(_ORD, _RANK, *_missing_names(columns)), frame.schema)


def mirror_changes(frame: pa.Table, key_columns: Sequence[str]) -> MirrorChanges:
    """The last change per key after the last truncate, as upserts and deletes for one MERGE.

    An unchanged-TOAST value is taken from an earlier event of the same key in the frame; when
    there is none, `_keep_<col>` tells the merge to keep the target's value. A key-changing update
    whose value lives only under the old key in the target cannot be filled here: pass the frame
    through `fill_unchanged(prior=...)` first (the pipeline does that for the history anyway).
    """
    keys = list(key_columns)
    columns = table_columns(frame)
    df = _sorted(frame)
    truncates = df.get_column(CHANGE_TYPE) == "truncate"
    clear_first = bool(truncates.any())
    if clear_first:
        last_truncate = int(truncates.arg_true()[-1])
        df = df.slice(last_truncate + 1)
    unchanged = _unchanged_columns(df)
    if unchanged:
        df = _fill(df, keys, unchanged)
    events = _events(df, keys)
    last = events.unique(subset=keys, keep="last", maintain_order=True)
    keep_flags = [
        (pl.col(_missing(c)) & (pl.col(OP) == "upsert")).alias(keep_column(c)) for c in unchanged
    ]
    last = last.with_columns(keep_flags)
    needed = [keep_column(c) for c in unchanged if last.get_column(keep_column(c)).any()]
    out = last.select(*columns, OP, *needed)
    schema = pa.schema(
        [frame.schema.field(c) for c in columns]
        + [pa.field(OP, pa.string())]
        + [pa.field(name, pa.bool_()) for name in needed]
    )
    return MirrorChanges(rows=_to_arrow(out, schema), clear_first=clear_first)


def with_older_rows(
    frame: pa.Table, values: dict[str, pa.Scalar], since: dict[str, tuple[int, int]]
) -> pa.Table:
    """The frame with `values[c]` in column `c` of the changes made before `since[c]` (the
    (lsn, seq) of the first change whose row has the column): what Postgres reports for a row
    older than a column added with a DEFAULT."""
    lsn, seq = frame[LSN], frame[SEQ]
    for column, value in values.items():
        first_lsn, first_seq = since[column]
        older = pc.or_(
            pc.less(lsn, first_lsn),
            pc.and_(pc.equal(lsn, first_lsn), pc.less(seq, first_seq)),
        )
        index = frame.column_names.index(column)
        typed = value.cast(frame.schema.field(column).type)
        frame = frame.set_column(
            index, frame.schema.field(column), pc.if_else(older, typed, frame[column])
        )
    return frame


def with_untouched_rows(
    changes: MirrorChanges, keys: pa.Table, values: dict[str, pa.Scalar]
) -> MirrorChanges:
    """`changes` plus one `fill` row per key of `keys` (the mirror's) that `changes` does not
    touch, setting only the columns of `values` (added with a DEFAULT) on them."""
    rows = changes.rows
    names = list(keys.column_names)
    touched = rows.select(names)
    untouched = keys.join(touched, keys=names, join_type="left anti")
    columns = {}
    for field in rows.schema:
        if field.name in names:
            columns[field.name] = untouched[field.name].cast(field.type)
        elif field.name == OP:
            columns[field.name] = pa.repeat(pa.scalar("fill", field.type), untouched.num_rows)
        elif field.name in values:
            scalar = values[field.name].cast(field.type)
            columns[field.name] = pa.repeat(scalar, untouched.num_rows)
        else:
            columns[field.name] = pa.nulls(untouched.num_rows, field.type)
    fills = pa.table(columns, schema=rows.schema)
    return MirrorChanges(
        rows=pa.concat_tables([rows, fills]),
        clear_first=changes.clear_first,
        fill_columns=tuple(values),
    )


def _sorted(frame: pa.Table) -> pl.DataFrame:
    """The frame in commit order: (lsn, seq, preimage before postimage), stable."""
    df = pl.from_arrow(frame)
    assert isinstance(df, pl.DataFrame)
    if UNCHANGED not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.List(pl.String)).alias(UNCHANGED))
    rank = pl.when(pl.col(CHANGE_TYPE) == "update_preimage").then(0).otherwise(1)
    return (
        df.with_row_index(_ORD)
        .with_columns(pl.col(_ORD).cast(pl.Int64))
        .with_columns(rank.alias(_RANK))
        .sort([LSN, SEQ, _RANK, _ORD], maintain_order=True)
    )


def _unchanged_columns(df: pl.DataFrame) -> list[str]:
    """Columns named in any `_pg_unchanged` list of the frame, in table order."""
    named = set(df.get_column(UNCHANGED).explode().drop_nulls().to_list())
    return [c for c in df.columns if c in named]


def _missing(column: str) -> str:
    """Working column: the row still lacks its unchanged-TOAST value of `column`."""
    return f"__missing_{column}"


def _missing_names(columns: Sequence[str]) -> list[str]:
    """The working `_missing` columns of `columns`."""
    return [_missing(c) for c in columns]


def _with_prior(
    df: pl.DataFrame,
    prior: pa.Table,
    key_columns: Sequence[str],
    columns: Sequence[str],
    *,
    lsn: int | None,
) -> pl.DataFrame:
    """Add the prior mirror rows as carrier events, each starting a life of its key, placed
    after the frame's changes up to `lsn` (a replayed change the mirror holds already must not
    come after them) and before the rest."""
    usable = [c for c in columns if c in prior.column_names]
    prior_df = pl.from_arrow(prior.select([*key_columns, *usable]))
    assert isinstance(prior_df, pl.DataFrame)
    prior_df = prior_df.with_columns(
        pl.lit("insert").alias(CHANGE_TYPE),
        pl.lit(-1 if lsn is None else lsn, dtype=df.schema[LSN]).alias(LSN),
        pl.lit(-1 if lsn is None else _LAST_SEQ, dtype=df.schema[SEQ]).alias(SEQ),
        pl.lit(-1, dtype=df.schema[_ORD]).alias(_ORD),
        pl.lit(1, dtype=df.schema[_RANK]).alias(_RANK),
        pl.lit(True).alias(_PRIOR),
    )
    prior_df = prior_df.cast({c: df.schema[c] for c in prior_df.columns if c in df.schema})
    df = df.with_columns(pl.lit(False).alias(_PRIOR))
    both = pl.concat([prior_df, df], how="diagonal_relaxed")
    return both.sort([LSN, SEQ, _RANK, _ORD], maintain_order=True)


def _fill(df: pl.DataFrame, keys: list[str], columns: Sequence[str]) -> pl.DataFrame:
    """Fill unchanged-TOAST values from the paired preimage, then from the key's earlier carriers.

    An unchanged TOAST value is never NULL (NULLs are not TOASTed), so any non-null value an event
    carries for the column is the value as of that event, and a null means "not carried" (a
    DEFAULT preimage or delete holds only the key). Values carry only within one life of a key:
    an insert, or an update that moves a row to the key, starts one (a delete, a truncate or a
    move away ends the last), so a row never inherits the value of a row deleted before it. An
    update with a preimage takes the value from the preimage's side only: after a key change the
    new key's earlier carriers belong to a row that no longer exists. Each round is vectorised;
    more than one round is needed only for chains of key changes inside the frame (A→B, B→C).
    """
    df = df.with_columns(
        (
            pl.col(UNCHANGED).list.contains(c).fill_null(False)
            & (pl.col(CHANGE_TYPE) == "update_postimage")
        ).alias(_missing(c))
        for c in columns
    )
    pre = pl.col(CHANGE_TYPE) == "update_preimage"
    post = pl.col(CHANGE_TYPE) == "update_postimage"
    old_keys = df.filter(pre).select(
        LSN, SEQ, *[pl.col(k).alias(f"__old_{k}") for k in keys], pl.lit(True).alias(_HAS_PRE)
    )
    df = df.join(old_keys, on=[LSN, SEQ], how="left", maintain_order="left")
    moved = post & ~pl.all_horizontal(pl.col(k).eq_missing(pl.col(f"__old_{k}")) for k in keys)
    starts = (pl.col(CHANGE_TYPE) == "insert") | (moved & pl.col(_HAS_PRE).fill_null(False))
    df = df.with_columns(
        starts.cast(pl.Int64).cum_sum().over(keys).alias(_LIFE),
        (post & pl.col(_HAS_PRE).fill_null(False)).alias(_HAS_PRE),
    ).drop(*[f"__old_{k}" for k in keys])
    for _ in range(df.height + 1):
        # latest value the key carried in this life up to this row (a missing row carries null)
        ff = df.with_columns(
            pl.col(c).forward_fill().over([*keys, _LIFE]).alias(f"__ff_{c}") for c in columns
        )
        from_pre = ff.filter(pre).select(
            LSN, SEQ, *[pl.col(f"__ff_{c}").alias(f"__pre_{c}") for c in columns]
        )
        step = ff.join(from_pre, on=[LSN, SEQ], how="left", maintain_order="left").with_columns(
            pl.when(pl.col(_missing(c)) & post)
            .then(
                pl.when(pl.col(_HAS_PRE)).then(pl.col(f"__pre_{c}")).otherwise(pl.col(f"__ff_{c}"))
            )
            .otherwise(pl.col(c))
            .alias(c)
            for c in columns
        )
        step = step.select(df.columns).with_columns(
            (pl.col(_missing(c)) & pl.col(c).is_null()).alias(_missing(c)) for c in columns
        )
        progressed = any(
            step.get_column(_missing(c)).sum() < df.get_column(_missing(c)).sum() for c in columns
        )
        df = step
        if not progressed:
            break
    return df.drop(_LIFE, _HAS_PRE)


def _events(df: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Upserts (insert, postimage) and deletes (delete, preimage of a key change), in order."""
    pre = df.filter(pl.col(CHANGE_TYPE) == "update_preimage")
    post_keys = df.filter(pl.col(CHANGE_TYPE) == "update_postimage").select(
        LSN, SEQ, *[pl.col(k).alias(f"__post_{k}") for k in keys]
    )
    paired = pre.join(post_keys, on=[LSN, SEQ], how="left")
    same_key = pl.all_horizontal(pl.col(k).eq_missing(pl.col(f"__post_{k}")) for k in keys)
    moved = paired.filter(~same_key).select(_ORD)
    kind = pl.col(CHANGE_TYPE)
    op = (
        pl.when(kind.is_in(["insert", "update_postimage"]))
        .then(pl.lit("upsert"))
        .when(kind == "delete")
        .then(pl.lit("delete"))
        .when(pl.col(_ORD).is_in(moved.get_column(_ORD).implode()))
        .then(pl.lit("delete"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return df.with_columns(op.alias(OP)).filter(pl.col(OP).is_not_null())


def _remaining_unchanged(columns: Sequence[str]) -> pl.Expr:
    """`_pg_unchanged` naming only what is still missing; null when nothing is."""
    parts = [pl.when(pl.col(_missing(c))).then(pl.lit(c)) for c in columns]
    names = pl.concat_list(parts).list.drop_nulls()
    return pl.when(names.list.len() > 0).then(names).otherwise(None).alias(UNCHANGED)


def _to_arrow(df: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """Back to Arrow with the caller's exact types (polars widens strings, lists, binaries)."""
    table = df.select(schema.names).to_arrow()
    return table.cast(schema)
