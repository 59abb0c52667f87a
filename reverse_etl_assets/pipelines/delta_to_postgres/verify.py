"""Prove a synced table equals its Delta source at the checkpointed version.

The Delta rows are streamed (binary COPY) into a scratch table with the same column types, and
Postgres computes a row count and an order-independent content hash (the sum of every row's
64-bit hash, built from each column type's own hash function) over both with one expression.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from reverse_etl_assets.delta.reader import SourceSnapshot, open_source, read_batches
from reverse_etl_assets.errors import SourceError, SpecError
from reverse_etl_assets.postgres import ddl, names, state
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.postgres.state import STATE_SCHEMA
from reverse_etl_assets.postgres.table_load import connections_for, copy_in_parallel
from reverse_etl_assets.schema.delta_to_postgres import PgColumn, pg_columns
from reverse_etl_assets.spec import SyncedTable
from reverse_etl_assets.transform.cleaning import BatchPreparer

SAMPLE_KEYS = 5


@dataclass(frozen=True, kw_only=True)
class Verification:
    """The outcome of comparing Postgres with Delta at one version."""

    name: str
    version: int
    postgres_rows: int
    delta_rows: int
    postgres_hash: str
    delta_hash: str
    differing_keys: tuple[dict[str, Any], ...]
    seconds: float

    @property
    def rows_match(self) -> bool:
        """Same number of rows."""
        return self.postgres_rows == self.delta_rows

    @property
    def content_matches(self) -> bool:
        """Same rows, whatever their order."""
        return self.rows_match and self.postgres_hash == self.delta_hash

    def describe(self) -> str:
        """One line for people."""
        if self.content_matches:
            return (
                f"{self.name}: Postgres equals Delta version {self.version} "
                f"({self.postgres_rows:,} rows, hash {self.postgres_hash})"
            )
        keys = ", ".join(str(k) for k in self.differing_keys) or "none found"
        return (
            f"{self.name}: Postgres differs from Delta version {self.version}: "
            f"{self.postgres_rows:,} rows vs {self.delta_rows:,}, hash {self.postgres_hash} vs "
            f"{self.delta_hash}; differing keys (sample): {keys}. "
            f"Rebuild with `reverse-etl sync {self.name} --full-refresh`"
        )


def verify_table(table: SyncedTable, dsn: str) -> Verification:
    """Compare the synced table with the source at its checkpoint version."""
    started = time.monotonic()
    with connect(dsn, autocommit=True) as conn:
        stored = state.read_state(conn, table.name) if _has_state(conn) else None
        if stored is None or stored.last_synced_version is None:
            raise SpecError(
                f"synced table {table.name!r} has no checkpoint to verify: sync it first"
            )
        source = open_source(
            table.source_uri,
            storage_options=table.storage_options,
            version=stored.last_synced_version,
        )
        if source.table_id != stored.table_id:
            raise SourceError(
                f"synced table {table.name!r}: the source was recreated since version "
                f"{stored.last_synced_version} was synced; sync it again before verifying"
            )
        columns = pg_columns(source.schema, table=table.name)
        scratch = names.fit_name("verify", table.pg_schema, table.pg_table)
        expected = ddl.qualified(STATE_SCHEMA, scratch)
        conn.execute(ddl.drop_table(STATE_SCHEMA, scratch))
        conn.execute(
            sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(
                expected,
                sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.ddl)) for c in columns
                ),
            )
        )
        try:
            _load_expected(dsn, table, source, columns, scratch)
            target = ddl.qualified(table.pg_schema, table.pg_table)
            pg_rows, pg_hash = _fingerprint(conn, target, columns)
            delta_rows, delta_hash = _fingerprint(conn, expected, columns)
            differing: tuple[dict[str, Any], ...] = ()
            if (pg_rows, pg_hash) != (delta_rows, delta_hash):
                differing = _differing_keys(conn, target, expected, columns, table.primary_key)
        finally:
            conn.execute(ddl.drop_table(STATE_SCHEMA, scratch))
    return Verification(
        name=table.name,
        version=stored.last_synced_version,
        postgres_rows=pg_rows,
        delta_rows=delta_rows,
        postgres_hash=pg_hash,
        delta_hash=delta_hash,
        differing_keys=differing,
        seconds=time.monotonic() - started,
    )


def _has_state(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('reverse_etl.synced_tables') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _load_expected(
    dsn: str,
    table: SyncedTable,
    source: SourceSnapshot,
    columns: tuple[PgColumn, ...],
    scratch: str,
) -> None:
    """The source rows, loaded like a sync loads them (NULL keys, NUL bytes, latest per key)."""

    preparer = BatchPreparer(
        columns, key=table.primary_key, policy=table.on_invalid_characters, table=table.name
    )
    workers = connections_for(source.rows(), table.max_connections)
    copy_in_parallel(
        dsn, STATE_SCHEMA, scratch, columns, preparer.stream(read_batches(source)), workers, None
    )
    if table.timeseries_key:
        with connect(dsn, autocommit=True) as conn:
            conn.execute(
                ddl.keep_latest(STATE_SCHEMA, scratch, table.primary_key, table.timeseries_key)
            )


def fingerprint_query(relation: sql.Composable, columns: tuple[PgColumn, ...]) -> sql.Composed:
    """Row count and the sum of every row's 64-bit hash (order-independent; PostgreSQL 14+)."""
    row = sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    return sql.SQL(
        "SELECT count(*), coalesce(sum(hash_record_extended(ROW({row}), 0)), 0) FROM {relation}"
    ).format(row=row, relation=relation)


def _fingerprint(
    conn: psycopg.Connection, relation: sql.Composable, columns: tuple[PgColumn, ...]
) -> tuple[int, str]:
    found = conn.execute(fingerprint_query(relation, columns)).fetchone()
    assert found is not None
    total = int(found[1]) % 2**64
    return int(found[0]), f"{total:016x}"


def _differing_keys(
    conn: psycopg.Connection,
    target: sql.Composable,
    expected: sql.Composable,
    columns: tuple[PgColumn, ...],
    key: tuple[str, ...],
) -> tuple[dict[str, Any], ...]:
    cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in key)
    rows = conn.execute(
        sql.SQL(
            "SELECT DISTINCT {keys} FROM ("
            "(SELECT {cols} FROM {a} EXCEPT ALL SELECT {cols} FROM {b}) UNION ALL "
            "(SELECT {cols} FROM {b} EXCEPT ALL SELECT {cols} FROM {a})) d LIMIT {n}"
        ).format(keys=keys, cols=cols, a=target, b=expected, n=sql.Literal(SAMPLE_KEYS))
    ).fetchall()
    return tuple(dict(zip(key, r, strict=True)) for r in rows)
