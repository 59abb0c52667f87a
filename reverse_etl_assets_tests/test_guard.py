"""The write guard cannot be talked round: an ordinary role that was handed ALL on a synced table
and CREATE on a schema of its own tries every bypass it can reach, for every kind of write, with
the pipeline connected as a superuser and as an ordinary owner role; the pipeline still syncs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from psycopg import sql

from reverse_etl_assets.errors import ConfigError
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.postgres import protection
from reverse_etl_assets_tests.helpers import fetch, one_table, write_delta

WRITES = [
    "INSERT INTO gold.items_synced VALUES (99, 'x')",
    "UPDATE gold.items_synced SET v = 'x'",
    "DELETE FROM gold.items_synced",
    "TRUNCATE gold.items_synced",
]

# What the attacker runs before its write: each a way to look like the pipeline.
TRICKS: dict[str, list[str]] = {
    "old setting": ["SET reverse_etl.writer = 'on'"],
    "old setting, session-wide": ["SELECT set_config('reverse_etl.writer', 'on', false)"],
    "own = operators first on the search_path": [
        "SET search_path = own, pg_catalog",
        "SET reverse_etl.writer = 'on'",
    ],
    "own = operators, pg_catalog last, pg_temp too": [
        "SET search_path = own, pg_temp, public, pg_catalog",
        "SET reverse_etl.writer = 'on'",
    ],
    "SET ROLE to a role it belongs to": [
        "SET ROLE {helper}",
        "SET search_path = own, pg_catalog",
        "SET reverse_etl.writer = 'on'",
    ],
}


def user_dsn(dsn: str, user: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.split("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


@dataclass(frozen=True)
class Roles:
    pipeline: str  # DSN the pipeline connects with
    pipeline_role: str
    attacker: str  # DSN of the ordinary role with ALL on the table
    attacker_role: str
    helper_role: str


def _create_roles(admin_dsn: str, *, ordinary_pipeline: bool) -> Roles:
    tag = uuid.uuid4().hex[:8]
    attacker, helper = f"attacker_{tag}", f"helper_{tag}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'attack'").format(sql.Identifier(attacker))
        )
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(helper)))
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(helper), sql.Identifier(attacker))
        )
        db = conn.execute("SELECT current_database()").fetchone()
        assert db is not None
        if ordinary_pipeline:
            pipeline = f"pipeline_{tag}"
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pipe'").format(sql.Identifier(pipeline))
            )
            conn.execute(
                sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                    sql.Identifier(db[0]), sql.Identifier(pipeline)
                )
            )
            pipeline_dsn = user_dsn(admin_dsn, pipeline, "pipe")
        else:
            row = conn.execute("SELECT current_user").fetchone()
            assert row is not None
            pipeline, pipeline_dsn = row[0], admin_dsn
    return Roles(
        pipeline=pipeline_dsn,
        pipeline_role=pipeline,
        attacker=user_dsn(admin_dsn, attacker, "attack"),
        attacker_role=attacker,
        helper_role=helper,
    )


def _drop_roles(admin_dsn: str, roles: Roles) -> None:
    names = [roles.attacker_role, roles.helper_role]
    if roles.pipeline != admin_dsn:
        names.append(roles.pipeline_role)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
        for name in names:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _arm_attacker(admin_dsn: str, roles: Roles) -> None:
    """What a careless DBA hands out: ALL on the synced table, a schema of its own; the attacker
    fills the schema with `=` operators that always say yes."""
    attacker = sql.Identifier(roles.attacker_role)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA own AUTHORIZATION {}").format(attacker))
        for role in (attacker, sql.Identifier(roles.helper_role)):
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA gold TO {}").format(role))
            conn.execute(sql.SQL("GRANT ALL ON gold.items_synced TO {}").format(role))
    with psycopg.connect(roles.attacker, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA own TO {}").format(sql.Identifier(roles.helper_role))
        )
        for left, right in [("name", "text"), ("text", "text"), ("name", "name")]:
            conn.execute(
                f"CREATE FUNCTION own.yes({left}, {right}) RETURNS boolean "
                "LANGUAGE sql AS 'SELECT true'"
            )
            conn.execute(
                f"CREATE OPERATOR own.= (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = own.yes)"
            )


@pytest.fixture(params=["superuser pipeline", "ordinary pipeline"])
def armed(
    request: pytest.FixtureRequest, tmp_path: Path, pg_dsn: str
) -> Iterator[tuple[Roles, Path]]:
    roles = _create_roles(pg_dsn, ordinary_pipeline=request.param == "ordinary pipeline")
    try:
        src = tmp_path / "src"
        write_delta(src, pa.table({"id": pa.array([1, 2], pa.int64()), "v": ["a", "b"]}))
        table = one_table(tmp_path, source=str(src), primary_key=["id"], mode="triggered")
        sync_table(table, roles.pipeline)
        _arm_attacker(pg_dsn, roles)
        yield roles, src
    finally:
        _drop_roles(pg_dsn, roles)


@pytest.mark.parametrize("trick", sorted(TRICKS))
@pytest.mark.parametrize("statement", WRITES)
def test_every_bypass_is_refused(armed: tuple[Roles, Path], trick: str, statement: str) -> None:
    roles, _ = armed
    with psycopg.connect(roles.attacker) as conn:
        for step in TRICKS[trick]:
            conn.execute(step.format(helper=roles.helper_role))
        if any("search_path" in step for step in TRICKS[trick]):
            # The operator is in reach: the unqualified comparison the old guard made says yes.
            row = conn.execute("SELECT current_user = 'nobody'::text").fetchone()
            assert row == (True,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(statement)
    assert "is a synced table" in str(info.value)


def test_the_pipeline_role_cannot_be_borrowed(armed: tuple[Roles, Path]) -> None:
    """SET ROLE / SET SESSION AUTHORIZATION to the pipeline's role are not open to the attacker."""
    roles, _ = armed
    for statement in (
        sql.SQL("SET ROLE {}").format(sql.Identifier(roles.pipeline_role)),
        sql.SQL("SET SESSION AUTHORIZATION {}").format(sql.Identifier(roles.pipeline_role)),
    ):
        with (
            psycopg.connect(roles.attacker) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(statement)


def test_a_member_of_the_pipeline_role_is_refused(armed: tuple[Roles, Path], pg_dsn: str) -> None:
    """current_user alone is no proof: SET ROLE to the pipeline's role leaves session_user."""
    roles, _ = armed
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(roles.pipeline_role), sql.Identifier(roles.attacker_role)
            )
        )
    with psycopg.connect(roles.attacker) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(roles.pipeline_role)))
        conn.execute("SET reverse_etl.writer = 'on'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(WRITES[0])
    assert "is a synced table" in str(info.value)


def test_the_pipeline_still_syncs_both_ways(armed: tuple[Roles, Path], tmp_path: Path) -> None:
    roles, src = armed
    DeltaTable(str(src)).update(updates={"v": "'z'"}, predicate="id = 1")
    table = one_table(
        tmp_path, source=str(src), primary_key=["id"], mode="triggered", full_refresh_threshold=1.0
    )
    assert sync_table(table, roles.pipeline).path == "incremental"
    assert fetch(roles.pipeline, "SELECT v FROM gold.items_synced ORDER BY id") == [("z",), ("b",)]
    write_delta(src, pa.table({"id": pa.array([3], pa.int64()), "v": ["c"]}))
    assert sync_table(table, roles.pipeline, full_refresh=True).path == "snapshot"
    assert fetch(roles.pipeline, "SELECT count(*) FROM gold.items_synced") == [(3,)]


def test_guard_function_is_hardened(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA reverse_etl")
        protection.ensure_guard_function(conn)
        row = conn.execute(
            "SELECT proconfig, prosrc FROM pg_proc "
            "WHERE proname = %s AND pronamespace = 'reverse_etl'::regnamespace",
            (protection.GUARD_FUNCTION,),
        ).fetchone()
    assert row is not None
    config, source = row
    assert config == ["search_path=pg_catalog, pg_temp"]
    assert " = " not in source.replace("ERRCODE = ", "").replace("DETAIL = ", "").replace(
        "HINT = ", ""
    )
    assert "session_user" in source


def test_a_trigger_planted_by_another_role_stops_the_sync(
    armed: tuple[Roles, Path], tmp_path: Path
) -> None:
    """With the TRIGGER privilege of a hand-made GRANT ALL, a role can attach a trigger that would
    run as the pipeline, past the guard: the pipeline refuses to write through it."""
    roles, src = armed
    with psycopg.connect(roles.attacker, autocommit=True) as conn:
        conn.execute("CREATE TABLE own.loot (who text)")
        conn.execute("GRANT INSERT ON own.loot TO PUBLIC")
        conn.execute("GRANT USAGE ON SCHEMA own TO PUBLIC")
        conn.execute(
            "CREATE FUNCTION own.steal() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN INSERT INTO own.loot VALUES (current_user); RETURN NULL; END$$"
        )
        conn.execute(
            "CREATE TRIGGER planted AFTER INSERT OR UPDATE ON gold.items_synced "
            "FOR EACH STATEMENT EXECUTE FUNCTION own.steal()"
        )
    DeltaTable(str(src)).update(updates={"v": "'z'"}, predicate="id = 1")
    table = one_table(
        tmp_path, source=str(src), primary_key=["id"], mode="triggered", full_refresh_threshold=1.0
    )
    with pytest.raises(ConfigError, match=r"trigger\(s\) \['planted'\] that the pipeline did not"):
        sync_table(table, roles.pipeline)
    assert fetch(roles.attacker, "SELECT count(*) FROM own.loot") == [(0,)]
    assert fetch(roles.pipeline, "SELECT v FROM gold.items_synced ORDER BY id") == [("a",), ("b",)]
