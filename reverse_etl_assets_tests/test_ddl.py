"""SQL builders produce quoted identifiers, whatever the names; derived names fit in 63 bytes.

Text-only tests (a connection is needed only to render the quoting).
"""

from __future__ import annotations

import psycopg

from reverse_etl_assets.postgres import ddl, names
from reverse_etl_assets.schema.delta_to_postgres import PgColumn

HOSTILE = 'x"; DROP TABLE t; --'


def render(dsn: str, composed: psycopg.sql.Composable) -> str:
    with psycopg.connect(dsn) as conn:
        return composed.as_string(conn)


def test_hostile_names_are_quoted(pg_server_dsn: str) -> None:
    column = PgColumn(name=HOSTILE, ddl="text", wire="text")
    text = render(pg_server_dsn, ddl.create_table("Sch ema", HOSTILE, (column,)))
    assert text == 'CREATE TABLE "Sch ema"."x""; DROP TABLE t; --" ("x""; DROP TABLE t; --" text)'
    key = render(pg_server_dsn, ddl.add_primary_key("s", "t", "t_pkey", ("select", "Mixed Case")))
    assert key == 'ALTER TABLE "s"."t" ADD CONSTRAINT "t_pkey" PRIMARY KEY ("select", "Mixed Case")'


def test_copy_statement_is_binary(pg_server_dsn: str) -> None:
    columns = (PgColumn(name="a", ddl="bigint", wire="plain"),)
    text = render(pg_server_dsn, ddl.copy_from_stdin("s", "t", columns))
    assert text == 'COPY "s"."t" ("a") FROM STDIN (FORMAT BINARY)'


def test_names_fit_postgres_limit() -> None:
    long_table = "t" * 40
    for name in (
        names.staging_table(long_table),
        names.retired_table(long_table),
        names.index_name(long_table, ("c" * 60, "d" * 60)),
    ):
        assert len(name.encode()) <= 63
    a = names.index_name(long_table, ("c" * 60, "x"))
    b = names.index_name(long_table, ("c" * 60, "y"))
    assert a != b  # a common prefix never aliases two objects
    assert names.fit_name("short", "idx") == "short_idx"
