"""`reverse-etl verify NAME` for a lakehouse sync: each mirror against its Postgres table, by row
count and content, with sample keys of what differs.

The mirror is as of the last LSN landed; run it while the source is quiet (or the follower has
caught up), or a difference may only be a change still on its way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from reverse_etl_assets.pipelines.postgres_to_delta.run import source_dsn
from reverse_etl_assets.pipelines.postgres_to_delta.snapshot import resolve_tables
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.replication.snapshot_copy import copy_batches
from reverse_etl_assets.schema.postgres_to_delta import arrow_schema
from reverse_etl_assets.spec import LakehouseSync

SAMPLE_KEYS = 5


@dataclass(frozen=True, kw_only=True)
class MirrorCheck:
    """One mirror compared with its Postgres table."""

    table: str
    postgres_rows: int
    mirror_rows: int
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    @property
    def count_matches(self) -> bool:
        """Same number of rows."""
        return self.postgres_rows == self.mirror_rows

    @property
    def content_matches(self) -> bool:
        """Same rows, value for value."""
        return self.count_matches and not (self.missing or self.extra or self.changed)

    def describe(self) -> str:
        """One line for the terminal."""
        if self.content_matches:
            return f"ok   {self.table}: {self.mirror_rows:,} rows equal"
        parts = [f"Postgres {self.postgres_rows:,} rows, mirror {self.mirror_rows:,}"]
        for word, keys in (("missing", self.missing), ("extra", self.extra)):
            if keys:
                parts.append(f"{word} in the mirror: {', '.join(keys)}")
        if self.changed:
            parts.append(f"different values: {', '.join(self.changed)}")
        return f"DIFF {self.table}: " + "; ".join(parts)


def verify_lakehouse(sync: LakehouseSync, dsn: str) -> list[MirrorCheck]:
    """Compare every mirror of `sync` with its Postgres table."""
    source = source_dsn(sync, dsn)
    with connect(source, autocommit=True) as conn:
        tables = [t for t in resolve_tables(conn, sync) if t.primary_key]
    checks = []
    for info in tables:
        schema = arrow_schema(info.columns)
        batches = copy_batches(
            source, snapshot_name=None, schema=info.schema, table=info.table, columns=info.columns
        )
        postgres = pa.Table.from_batches(list(batches), schema=schema)
        try:
            mirror = DeltaTable(
                sync.mirror_uri(info.table), storage_options=sync.storage_options
            ).to_pyarrow_table(columns=schema.names)
        except TableNotFoundError:
            mirror = schema.empty_table()
        checks.append(
            _compare(f"{info.schema}.{info.table}", postgres, mirror, list(info.primary_key))
        )
    return checks


def _compare(label: str, postgres: pa.Table, mirror: pa.Table, keys: list[str]) -> MirrorCheck:
    left = _hashed(postgres, keys)
    right = _hashed(mirror.cast(postgres.schema), keys)
    joined = left.join(right, on=keys, how="full", suffix="_m", coalesce=True, nulls_equal=True)
    missing = joined.filter(pl.col("__hash_m").is_null())
    extra = joined.filter(pl.col("__hash").is_null())
    changed = joined.filter(
        pl.col("__hash").is_not_null()
        & pl.col("__hash_m").is_not_null()
        & (pl.col("__hash") != pl.col("__hash_m"))
    )
    return MirrorCheck(
        table=label,
        postgres_rows=postgres.num_rows,
        mirror_rows=mirror.num_rows,
        missing=_sample(missing, keys),
        extra=_sample(extra, keys),
        changed=_sample(changed, keys),
    )


def _hashed(table: pa.Table, keys: list[str]) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    values = [c for c in frame.columns]
    return frame.select(*keys, pl.struct(values).hash(seed=7).alias("__hash"))


def _sample(frame: pl.DataFrame, keys: list[str]) -> list[str]:
    rows = frame.select(keys).head(SAMPLE_KEYS).rows()
    return [", ".join(f"{k}={v!r}" for k, v in zip(keys, row, strict=True)) for row in rows]
