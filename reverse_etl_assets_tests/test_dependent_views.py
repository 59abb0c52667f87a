"""Views other roles built over a synced table survive full refreshes untouched: the pipeline needs
no rights over their schemas, and every property (options, owner, grants, comment, row-level
security of the table underneath) stays."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from psycopg import sql

from reverse_etl_assets.errors import DataError
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets_tests.helpers import fetch, items, one_table, write_delta


def user_dsn(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{user}:pw@{parts.netloc.split('@', 1)[-1]}"))


@pytest.fixture
def roles(pg_dsn: str) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    names = {"pipeline": f"pipe_{tag}", "reader": f"reader_{tag}", "viewer": f"viewer_{tag}"}
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        db = conn.execute("SELECT current_database()").fetchone()
        assert db is not None
        for name in names.values():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(db[0]), sql.Identifier(names["pipeline"])
            )
        )
        conn.execute(
            sql.SQL("CREATE SCHEMA mine AUTHORIZATION {}").format(sql.Identifier(names["reader"]))
        )
    try:
        yield names
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for name in names.values():
                conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
            for name in names.values():
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


VIEW_FACTS = (
    "SELECT c.oid, c.reloptions, pg_get_userbyid(c.relowner), c.relacl::text, "
    "obj_description(c.oid, 'pg_class') FROM pg_class c WHERE c.oid = 'mine.v'::regclass"
)


@pytest.mark.parametrize("as_superuser", [False, True], ids=["ordinary pipeline", "superuser"])
def test_a_readers_view_survives_refreshes_with_all_its_properties(
    tmp_path: Path, pg_dsn: str, roles: dict[str, str], as_superuser: bool
) -> None:
    """Ordinary pipeline role: re-creating the view needed rights over `mine` (defect 7).
    Superuser: re-creating it dropped security_invoker, so the policy no longer applied (11)."""
    pipeline = pg_dsn if as_superuser else user_dsn(pg_dsn, roles["pipeline"])
    src = tmp_path / "src"
    write_delta(src, items(range(3)))
    table = one_table(tmp_path, source=str(src), primary_key=["id"], readers=[roles["reader"]])
    sync_table(table, pipeline)
    with psycopg.connect(user_dsn(pg_dsn, roles["reader"]), autocommit=True) as conn:
        conn.execute(
            "CREATE VIEW mine.v WITH (security_barrier = true, security_invoker = true) AS "
            "SELECT id, v FROM gold.items_synced WHERE id >= 0 WITH CASCADED CHECK OPTION"
        )
        conn.execute("COMMENT ON VIEW mine.v IS 'the reader''s view'")
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA mine TO {}").format(sql.Identifier(roles["viewer"]))
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON mine.v TO {}").format(sql.Identifier(roles["viewer"]))
        )
    # Row-level security on the synced table: the viewer may see id 0 only.
    with psycopg.connect(pipeline, autocommit=True) as conn:
        conn.execute("ALTER TABLE gold.items_synced ENABLE ROW LEVEL SECURITY")
        conn.execute(
            sql.SQL("CREATE POLICY only_zero ON gold.items_synced TO {} USING (id = 0)").format(
                sql.Identifier(roles["viewer"])
            )
        )
        conn.execute(
            sql.SQL("CREATE POLICY everything ON gold.items_synced TO {} USING (true)").format(
                sql.Identifier(roles["reader"])
            )
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON gold.items_synced TO {}").format(
                sql.Identifier(roles["viewer"])
            )
        )
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA gold TO {}").format(sql.Identifier(roles["viewer"]))
        )
    before = fetch(pg_dsn, VIEW_FACTS)
    viewer = user_dsn(pg_dsn, roles["viewer"])
    assert fetch(viewer, "SELECT id FROM mine.v ORDER BY id") == [(0,)]

    write_delta(src, items([0, 1, 5], tag="w"), mode="overwrite")
    result = sync_table(table, pipeline)  # a snapshot table: a full refresh
    assert result.path == "snapshot"

    assert fetch(user_dsn(pg_dsn, roles["reader"]), "SELECT * FROM mine.v ORDER BY id") == [
        (0, "w0"),
        (1, "w1"),
        (5, "w5"),
    ]
    assert fetch(pg_dsn, VIEW_FACTS) == before  # same view: options, owner, grants, comment
    assert fetch(viewer, "SELECT id FROM mine.v ORDER BY id") == [(0,)]  # the policy still holds
    # Still read-only for everyone else, still written by the pipeline.
    with (
        psycopg.connect(user_dsn(pg_dsn, roles["reader"])) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("DELETE FROM gold.items_synced")
    write_delta(src, items([7], tag="x"), mode="append")
    sync_table(table, pipeline, full_refresh=True)
    assert fetch(pg_dsn, "SELECT count(*) FROM mine.v") == [(4,)]


def test_a_refresh_that_drops_a_column_under_a_view_refuses_clearly(
    tmp_path: Path, pg_dsn: str
) -> None:
    src = tmp_path / "src"
    write_delta(src, items(range(3)))
    table = one_table(tmp_path, source=str(src), primary_key=["id"])
    sync_table(table, pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE VIEW public.v AS SELECT * FROM gold.items_synced")
    write_deltalake(
        str(src),
        pa.table({"id": pa.array([1], pa.int64())}),
        mode="overwrite",
        schema_mode="overwrite",
    )
    with pytest.raises(
        DataError, match=r"public.v.*depend on gold.items_synced.*changes its columns"
    ):
        sync_table(table, pg_dsn)
    assert fetch(pg_dsn, "SELECT count(*) FROM public.v") == [(3,)]
