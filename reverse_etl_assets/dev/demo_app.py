"""The demo application's own tables in Postgres (sign-ups for restock notifications, orders),
and a few writes each run, for the demo's lakehouse sync to carry into Delta.

`make demo` runs it before syncing; run again, it adds new sign-ups and orders and changes some.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import psycopg

from reverse_etl_assets import settings
from reverse_etl_assets.postgres.connect import connect

SCHEMA_STATEMENTS = (
    "CREATE SCHEMA IF NOT EXISTS app",
    """CREATE TABLE IF NOT EXISTS app.signups (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        email text NOT NULL,
        sku text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        notified boolean NOT NULL DEFAULT false
    )""",
    """CREATE TABLE IF NOT EXISTS app.orders (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        email text NOT NULL,
        sku text NOT NULL,
        quantity integer NOT NULL,
        amount numeric(12, 2) NOT NULL,
        status text NOT NULL DEFAULT 'placed',
        tags text[],
        placed_at timestamptz NOT NULL DEFAULT now()
    )""",
)


def write_demo_activity(conn: psycopg.Connection, *, rows: int = 50) -> int:
    """Create the app tables when missing, then sign-ups, orders and a few updates and deletes,
    each in its own transaction as an application would; the rows written."""
    for statement in SCHEMA_STATEMENTS:
        conn.execute(statement)
    with conn.transaction():
        conn.execute(
            "INSERT INTO app.signups (email, sku) SELECT 'user' || g || '@example.com', "
            "'SKU-' || lpad((g %% 40)::text, 5, '0') FROM generate_series(1, %s) g",
            (rows,),
        )
    with conn.transaction():
        conn.execute(
            "INSERT INTO app.orders (email, sku, quantity, amount, tags) "
            "SELECT 'user' || g || '@example.com', 'SKU-' || lpad((g %% 40)::text, 5, '0'), "
            "1 + g %% 3, (g %% 97) * 1.25 + 0.99, "
            "ARRAY['web', CASE WHEN g %% 2 = 0 THEN 'promo' END] "
            "FROM generate_series(1, %s) g",
            (rows,),
        )
    with conn.transaction():
        conn.execute("UPDATE app.orders SET status = 'shipped' WHERE id % 5 = 0")
        conn.execute("UPDATE app.signups SET notified = true WHERE id % 7 = 0")
    with conn.transaction():
        conn.execute("DELETE FROM app.orders WHERE id % 11 = 0 AND status = 'placed'")
    return 2 * rows


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m reverse_etl_assets.dev.demo_app [--rows N]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50)
    args = parser.parse_args(argv)
    with connect(settings.pg_dsn(), autocommit=True) as conn:
        written = write_demo_activity(conn, rows=args.rows)
    print(f"demo app: {written} new sign-ups and orders written to app.signups / app.orders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
