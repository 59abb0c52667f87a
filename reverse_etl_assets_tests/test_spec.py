"""The spec file: every bad input refused with a message naming the table, the field and the fix.

Pure parsing; no Postgres or Delta needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.spec import load_spec, parse_spec

GOOD = {
    "name": "lakebase.gold.users_synced",
    "source": "analytics.gold.users",
    "primary_key": ["id"],
}


def parse(tmp_path: Path, **changes: Any) -> Any:
    entry = {**GOOD, **changes}
    entry = {k: v for k, v in entry.items() if v is not None}
    return parse_spec({"lake_root": "lake", "synced_tables": [entry]}, path=tmp_path / "s.yaml")


def test_defaults_and_resolved_source(tmp_path: Path) -> None:
    table = parse(tmp_path).synced_tables[0]
    assert table.mode == "snapshot"
    assert table.max_connections == 4
    assert table.full_refresh_threshold is None  # the cheaper path, from measured cost
    assert table.on_invalid_characters == "fail"
    assert table.source_uri == str(tmp_path / "lake" / "analytics" / "gold" / "users")
    assert (table.pg_schema, table.pg_table) == ("gold", "users_synced")
    assert table.asset_key_path == ["lakebase", "gold", "users_synced"]


def test_path_and_uri_sources(tmp_path: Path) -> None:
    assert parse(tmp_path, source="s3://bucket/t").synced_tables[0].source_uri == "s3://bucket/t"
    assert parse(tmp_path, source="/abs/t").synced_tables[0].source_uri == "/abs/t"
    rel = parse(tmp_path, source="rel/t").synced_tables[0].source_uri
    assert rel == str(tmp_path / "rel" / "t")


def test_lake_root_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVERSE_ETL_LAKE_ROOT", "s3://bucket/lake")
    uri = parse(tmp_path).synced_tables[0].source_uri
    assert uri == "s3://bucket/lake/analytics/gold/users"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"primary_key": None}, "`primary_key` is required"),
        ({"primary_key": []}, "`primary_key` is required"),
        ({"mode": "streaming"}, "`mode` must be one of"),
        ({"name": "gold.users"}, "`name` must be <catalog>.<schema>.<table>"),
        ({"name": "lakebase.gold.us-ers"}, "[A-Za-z0-9_]+"),
        ({"name": 'lakebase.gold.x"; drop table t; --'}, "[A-Za-z0-9_]+"),
        ({"colour": "blue"}, "unknown key(s) ['colour']"),
        ({"schedule": "hourly"}, "5-field cron"),
        ({"max_connections": 0}, "`max_connections` must be an integer from 1 to 16"),
        ({"max_connections": 17}, "from 1 to 16"),
        ({"on_invalid_characters": "replace"}, "fail or strip"),
        ({"full_refresh_threshold": 2}, "between 0 and 1"),
        ({"indexes": "email"}, "`indexes` must be a list of column lists"),
        ({"indexes": [[1]]}, "`indexes[0]` must be a list of names"),
        ({"timeseries_key": "id"}, "cannot be a key column"),
        ({"source": ""}, "`source` is required"),
        ({"mode": "continuous", "schedule": "0 * * * *"}, "snapshot and triggered tables only"),
        ({"primary_key": ["id", "id"]}, "lists 'id' twice"),
    ],
)
def test_bad_table_entries_are_refused(
    tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    with pytest.raises(SpecError) as info:
        parse(tmp_path, **changes)
    assert expected in str(info.value)


def test_error_names_the_table(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"synced table 'lakebase.gold.users_synced': `mode`"):
        parse(tmp_path, mode="nope")


def test_duplicate_names_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="declared twice"):
        parse_spec({"synced_tables": [GOOD, GOOD]}, path=tmp_path / "s.yaml")


def test_top_level_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="unknown top-level key"):
        parse_spec({"synced_tables": [GOOD], "tables": []}, path=tmp_path / "s.yaml")
    with pytest.raises(SpecError, match="at least one synced table"):
        parse_spec({"synced_tables": []}, path=tmp_path / "s.yaml")
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("synced_tables: [\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def test_lookup_lists_declared_tables(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"declared: lakebase\.gold\.users_synced"):
        parse(tmp_path).table("lakebase.gold.other")


def test_two_names_for_one_postgres_table_are_refused(tmp_path: Path) -> None:
    a = {**GOOD, "name": "cat_a.s.t"}
    b = {**GOOD, "name": "cat_b.s.t"}
    with pytest.raises(
        SpecError, match=r"'cat_a\.s\.t' and 'cat_b\.s\.t' both land in .*\"s\"\.\"t\""
    ):
        parse_spec({"synced_tables": [a, b]}, path=tmp_path / "s.yaml")
    # Postgres names are quoted, so case makes another table
    upper = {**GOOD, "name": "cat_b.s.T"}
    assert (
        len(parse_spec({"synced_tables": [a, upper]}, path=tmp_path / "s.yaml").synced_tables) == 2
    )


def test_a_table_named_like_another_ones_swap_table_is_refused(tmp_path: Path) -> None:
    a = {**GOOD, "name": "cat.s.t"}
    b = {**GOOD, "name": "cat.s.t__retl_new"}
    with pytest.raises(SpecError, match=r"'cat\.s\.t__retl_new' lands in .*'cat\.s\.t' uses"):
        parse_spec({"synced_tables": [a, b]}, path=tmp_path / "s.yaml")


def test_the_state_schema_is_not_a_target(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"'x\.reverse_etl\.synced_tables'.*schema 'reverse_etl'"):
        parse(tmp_path, name="x.reverse_etl.synced_tables")
    with pytest.raises(SpecError, match=r"schema 'reverse_etl'"):
        parse(tmp_path, name="x.reverse_etl.anything")
