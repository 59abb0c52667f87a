"""A database or role may set how Postgres prints dates and intervals (DateStyle, IntervalStyle);
every session of the pipeline reads them in the forms its driver parses, in both directions, and
keeps the settings the DSN itself asks for."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa

from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.pipelines.delta_to_postgres.verify import verify_table
from reverse_etl_assets.pipelines.postgres_to_delta.run import sync_lakehouse
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets_tests.helpers import one_table, write_delta
from reverse_etl_assets_tests.lakehouse_helpers import delta_rows, execute, lakehouse_sync
from reverse_etl_assets_tests.test_verify import tamper


def german_dates(dsn: str) -> None:
    database = dsn.rsplit("/", 1)[1]
    execute(
        dsn,
        f"ALTER DATABASE {database} SET datestyle = 'German, DMY'",
        f"ALTER DATABASE {database} SET intervalstyle = 'sql_standard'",
    )


def test_a_german_datestyle_database_syncs_both_ways(pg_dsn: str, tmp_path: Path) -> None:
    german_dates(pg_dsn)
    # Delta -> Postgres, keyed by a date: sync, then verify names a tampered key (read back).
    days = [dt.date(2024, 3, 1), dt.date(2024, 3, 2)]
    write_delta(tmp_path / "src", pa.table({"day": days, "v": ["a", "b"]}))
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["day"])
    sync_table(table, pg_dsn)
    tamper(pg_dsn, "UPDATE gold.items_synced SET v = 'tampered' WHERE day = '2024-03-02'")
    assert verify_table(table, pg_dsn).differing_keys == ({"day": dt.date(2024, 3, 2)},)
    # Postgres -> Delta: the state it keeps holds timestamps, read back on every drain.
    execute(
        pg_dsn,
        "CREATE TABLE p (id int PRIMARY KEY, d date, i interval)",
        "INSERT INTO p VALUES (1, '2024-03-01', '1 day')",
    )
    sync = lakehouse_sync(tmp_path, tables=["public.p"])
    sync_lakehouse(sync, pg_dsn)
    execute(pg_dsn, "INSERT INTO p VALUES (2, '2024-03-02', '2 days 03:00:00')")
    sync_lakehouse(sync, pg_dsn)
    assert [(r["d"], r["i"]) for r in delta_rows(sync.mirror_uri("p"))] == [
        (dt.date(2024, 3, 1), "1 day"),
        (dt.date(2024, 3, 2), "2 days 03:00:00"),
    ]


def test_the_dsn_s_own_options_are_kept(pg_dsn: str) -> None:
    separator = "&" if "?" in pg_dsn else "?"
    dsn = f"{pg_dsn}{separator}options=-c%20statement_timeout%3D12345"
    with connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('statement_timeout'), "
                           "current_setting('DateStyle')").fetchone()  # fmt: skip
    assert row == ("12345ms", "ISO, MDY")
