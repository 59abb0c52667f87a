"""Postgres column types → polars dtypes, for reading a table back with the dtypes it was written
from (the reverse of the Delta → Postgres map).

Left to itself, polars infers from Python values: integer -> Int64, numeric(10,2) ->
Decimal(38,2), timestamptz in the session's TimeZone, and Null for every column of an empty table.
"""

from __future__ import annotations

import re

import polars as pl

POLARS_TYPES: dict[str, pl.DataType] = {
    "bigint": pl.Int64(),
    "integer": pl.Int32(),
    "smallint": pl.Int16(),
    "boolean": pl.Boolean(),
    "real": pl.Float32(),
    "double precision": pl.Float64(),
    "text": pl.String(),
    "bytea": pl.Binary(),
    "date": pl.Date(),
    "timestamp with time zone": pl.Datetime("us", "UTC"),
    "timestamp without time zone": pl.Datetime("us"),
    "interval": pl.Duration("us"),
    "time without time zone": pl.Time(),
}
NUMERIC = re.compile(r"numeric\((\d+),(\d+)\)")


def polars_dtypes(column_types: dict[str, str]) -> dict[str, pl.DataType]:
    """The polars dtype of each column whose Postgres type (as `format_type` spells it) says it;
    jsonb and unknown types are left to inference."""
    dtypes: dict[str, pl.DataType] = {}
    for name, pg_type in column_types.items():
        if numeric := NUMERIC.fullmatch(pg_type):
            dtypes[name] = pl.Decimal(int(numeric[1]), int(numeric[2]))
        elif pg_type in POLARS_TYPES:
            dtypes[name] = POLARS_TYPES[pg_type]
    return dtypes
