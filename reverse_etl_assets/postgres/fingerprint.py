"""Fingerprints of a Postgres table computed where it lives: row count and the sum of every row's
64-bit hash, for the whole table or per key bucket, and the keys and hashes of chosen buckets.

Rows are hashed by Postgres's own extended hash functions, which `transform.pg_hash` recomputes
over Arrow data, so only a few numbers (or the rows of a few buckets) leave the server. JSON is
the exception the other way: texts from elsewhere are sent in to be hashed as Postgres prints them
as jsonb.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import errors, sql

from reverse_etl_assets.schema.delta_to_postgres import PgColumn
from reverse_etl_assets.transform import pg_hash
from reverse_etl_assets.transform.buckets import HASH_MODULUS, BucketFingerprints, Fingerprint


def _element(column: PgColumn, *, guarded: bool = False) -> sql.Composable:
    """The column as the row hash takes it (see `pg_hash.hash_form`). `guarded`: a numeric
    NaN, which no bigint holds, is NULL instead of failing the query."""
    name = sql.Identifier(column.name)
    form = pg_hash.hash_form(column)
    if form == "text":
        return sql.SQL("{}::text").format(name)
    if form == "scaled":
        factor = sql.Literal(10 ** pg_hash.numeric_scale(column))
        if guarded:
            return sql.SQL("(CASE WHEN {n} {finite} THEN {n} * {f} END)::bigint").format(
                n=name, finite=_FINITE, f=factor
            )
        return sql.SQL("({} * {})::bigint").format(name, factor)
    return name


# True for every value a numeric(p <= 18) column holds but NaN (which sorts above every number;
# a numeric with a precision cannot hold an infinity).
_FINITE = sql.SQL("BETWEEN -1e18 AND 1e18")


# Each column type's extended hash function, called with the value and a seed. Dates and
# timestamps with a zone have none of their own that SQL can call: they are hashed as what their
# hash opclass hashes (days since 2000-01-01, the same microseconds as a timestamp), written so
# that 'infinity', which only Postgres can hold, hashes too instead of failing the query.
_HASH_FUNCTIONS = {
    "bigint": "hashint8extended({v}, {s})",
    "integer": "hashint4extended({v}, {s})",
    "smallint": "hashint2extended({v}, {s})",
    "boolean": "hashint4extended({v}::integer, {s})",
    "real": "hashfloat4extended({v}, {s})",
    "double precision": "hashfloat8extended({v}, {s})",
    "date": (
        "CASE WHEN isfinite({v}) THEN hashint4extended({v} - date '2000-01-01', {s}) "
        "ELSE hash_record_extended(ROW({v}), {s}) END"
    ),
    "timestamp": "timestamp_hash_extended({v}, {s})",
    "timestamptz": "timestamp_hash_extended({v} AT TIME ZONE 'UTC', {s})",
    "time": "time_hash_extended({v}, {s})",
    "interval": "interval_hash_extended({v}, {s})",
    "text": "hashtextextended({v}, {s})",
    # bytea's hash function takes `internal`; a one-element record hashes its element alone.
    "bytea": "hash_record_extended(ROW({v}), {s})",
}


def column_hash(column: PgColumn, seed: int, *, guarded: bool = False) -> sql.Composed:
    """The column's own extended hash with `seed`, in its `pg_hash.hash_form`; NULL hashes to 0.

    `guarded`: a numeric NaN in a numeric(p <= 18) column, which only Postgres can hold (typed
    in by hand), is hashed as text instead of failing the query: its row differs."""
    form = pg_hash.hash_form(column)
    if form == "value":
        template = _HASH_FUNCTIONS[column.ddl]
    elif form == "scaled":
        template = _HASH_FUNCTIONS["bigint"]
    else:
        template = _HASH_FUNCTIONS["text"]
    seed_literal = sql.Literal(seed)
    hashed = sql.SQL(template).format(v=_element(column), s=seed_literal)
    if guarded and form == "scaled":
        hashed = sql.SQL("CASE WHEN {v} {finite} THEN {h} ELSE {text} END").format(
            v=sql.Identifier(column.name),
            finite=_FINITE,
            h=hashed,
            text=sql.SQL(_HASH_FUNCTIONS["text"]).format(
                v=sql.SQL("{}::text").format(sql.Identifier(column.name)), s=seed_literal
            ),
        )
    return sql.SQL("coalesce({}, 0)").format(hashed)


def row_hash(columns: Sequence[PgColumn], *, guarded: bool = False) -> sql.Composed:
    """hashint8extended(h1 # h2 # ... # hn, 0): column i's own hash seeded with i (NULL: 0),
    XORed, then hashed once more as a bigint.

    Calling each type's hash function directly costs Postgres about half of building a record
    of the row for `hash_record_extended` (measured on the 10-column benchmark table). The seeds
    tell columns apart, so two values swapped between columns of one row change its hash; the
    last hash mixes each row's bits before the sum, so two rows that swapped a value do too. A
    NULL hashes to 0, a value only by chance (a float's zero hashes to its seed, not 0), so
    0.0 and NULL differ.
    """
    return sql.SQL("hashint8extended({}, 0)").format(
        sql.SQL(" # ").join(
            column_hash(c, seed, guarded=guarded) for seed, c in enumerate(columns, start=1)
        )
    )


def key_hash(key_columns: Sequence[PgColumn], *, guarded: bool = False) -> sql.Composed:
    """hash_record_extended of the key columns, in key order."""
    elements = sql.SQL(", ").join(_element(c, guarded=guarded) for c in key_columns)
    return sql.SQL("hash_record_extended(ROW({}), 0)").format(elements)


def total_query(
    relation: sql.Composable, columns: Sequence[PgColumn], *, guarded: bool = False
) -> sql.Composed:
    """Row count and the sum of the row hashes of the whole relation."""
    return sql.SQL("SELECT count(*), coalesce(sum({h}), 0) FROM {r}").format(
        h=row_hash(columns, guarded=guarded), r=relation
    )


def bucket_query(
    relation: sql.Composable,
    columns: Sequence[PgColumn],
    key_columns: Sequence[PgColumn],
    buckets: int,
    *,
    guarded: bool = False,
) -> sql.Composed:
    """Per key bucket (key hash modulo `buckets`, a power of two): row count and hash sum."""
    return sql.SQL("SELECT {k} & {mask}, count(*), sum({h}) FROM {r} GROUP BY 1").format(
        k=key_hash(key_columns, guarded=guarded),
        mask=sql.Literal(buckets - 1),
        h=row_hash(columns, guarded=guarded),
        r=relation,
    )


def bucket_rows_query(
    relation: sql.Composable,
    columns: Sequence[PgColumn],
    key_columns: Sequence[PgColumn],
    buckets: int,
    *,
    guarded: bool = False,
) -> sql.Composed:
    """Key hash, row hash and key values of the rows in the buckets passed as parameter 1."""
    keys = sql.SQL(", ").join(sql.Identifier(c.name) for c in key_columns)
    return sql.SQL("SELECT {k}, {h}, {keys} FROM {r} WHERE {k} & {mask} = ANY(%s)").format(
        k=key_hash(key_columns, guarded=guarded),
        h=row_hash(columns, guarded=guarded),
        keys=keys,
        r=relation,
        mask=sql.Literal(buckets - 1),
    )


def json_hashes_query() -> sql.SQL:
    """hashtextextended, with seed parameter 1, of each JSON text as jsonb prints it, in order,
    from parameter 2: the texts each ended by a line break (compact JSON has no raw one), an
    empty line for NULL, which hashes to 0 as a NULL column does; parameter 3 is how many texts
    there are (the empty piece after the last line break is not one)."""
    return sql.SQL(
        "SELECT coalesce(hashtextextended(v::jsonb::text, %s), 0) "
        "FROM string_to_table(%s, E'\\n', '') WITH ORDINALITY AS u(v, i) ORDER BY i LIMIT %s"
    )


def hash_json_texts(conn: psycopg.Connection, texts: pa.Array, seed: int = 0) -> np.ndarray:
    """The hashes, with `seed`, of JSON texts as the row hash takes a jsonb value, computed by
    Postgres itself (its own jsonb parsing and printing, many times faster than doing it in
    Python)."""
    if len(texts) == 0:
        return np.zeros(0, dtype=np.uint64)
    lines = "".join("\n" if text is None else text + "\n" for text in texts.to_pylist())
    rows = conn.execute(json_hashes_query(), (seed, lines, len(texts))).fetchall()
    return np.array([h % HASH_MODULUS for (h,) in rows], dtype=np.uint64)


def read_total(
    conn: psycopg.Connection, relation: sql.Composable, columns: Sequence[PgColumn]
) -> Fingerprint:
    """Run `total_query`."""
    found = _fetch(conn, lambda guarded: total_query(relation, columns, guarded=guarded))[0]
    return Fingerprint(rows=int(found[0]), total=int(found[1]) % HASH_MODULUS)


def read_buckets(
    conn: psycopg.Connection,
    relation: sql.Composable,
    columns: Sequence[PgColumn],
    key_columns: Sequence[PgColumn],
    buckets: int,
) -> BucketFingerprints:
    """Run `bucket_query`: every bucket's fingerprint."""
    found = BucketFingerprints(buckets)
    for bucket, rows, total in _fetch(
        conn,
        lambda guarded: bucket_query(relation, columns, key_columns, buckets, guarded=guarded),
    ):
        found.counts[bucket] = rows
        found.sums[bucket] = int(total) % HASH_MODULUS
    return found


def read_bucket_rows(
    conn: psycopg.Connection,
    relation: sql.Composable,
    columns: Sequence[PgColumn],
    key_columns: Sequence[PgColumn],
    buckets: int,
    wanted: Sequence[int],
) -> list[tuple[int, int, dict[str, Any]]]:
    """Run `bucket_rows_query`: (key hash, row hash, key values) of each row of `wanted`."""
    rows = _fetch(
        conn,
        lambda guarded: bucket_rows_query(relation, columns, key_columns, buckets, guarded=guarded),
        (list(wanted),),
    )
    names = [c.name for c in key_columns]
    return [
        (
            int(k) % HASH_MODULUS,
            int(h) % HASH_MODULUS,
            dict(zip(names, values, strict=True)),
        )
        for k, h, *values in rows
    ]


def _fetch(
    conn: psycopg.Connection,
    query: Callable[[bool], sql.Composed],
    params: tuple[Any, ...] | None = None,
) -> list[tuple[Any, ...]]:
    """The rows of `query(guarded)`: first unguarded (the guard against a numeric NaN costs
    every row), again guarded only when one failed the query."""
    try:
        with conn.transaction():
            return conn.execute(query(False), params).fetchall()
    except errors.FeatureNotSupported:  # "cannot convert NaN to bigint"
        return conn.execute(query(True), params).fetchall()
