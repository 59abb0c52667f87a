"""Proofs of equality (verify and the asset checks), delete, and progress lines.

A tampered row, a missing row and an extra row must all be caught, naming the key and the kind
of difference, for every mapped type.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pyarrow as pa
import pytest
import yaml

from reverse_etl_assets.definitions import build_definitions
from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.pipelines.delta_to_postgres.delete import delete_synced_table
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.pipelines.delta_to_postgres.verify import (
    SAMPLE_KEYS,
    Difference,
    verify_table,
)
from reverse_etl_assets.postgres.protection import allow_pipeline_writes
from reverse_etl_assets.runtime.progress import describe_progress
from reverse_etl_assets_tests.helpers import (
    fetch,
    one_table,
    postgres_resources,
    spec_of,
    table_exists,
    write_delta,
)
from reverse_etl_assets_tests.test_pg_hash import wide_table

NAME = "lakebase.gold.items_synced"


def source_table() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "v": ["a", None, "c"],
            "f": pa.array([float("nan"), 1.5, None]),
            "tags": pa.array([["x"], [], None], pa.list_(pa.string())),
        }
    )


def tamper(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn) as conn:  # as the pipeline would: past the guard
        allow_pipeline_writes(conn)
        conn.execute(statement)


@pytest.mark.parametrize(
    ("statement", "rows_match", "key"),
    [
        ("UPDATE gold.items_synced SET v = 'tampered' WHERE id = 2", True, {"id": 2}),
        ("DELETE FROM gold.items_synced WHERE id = 3", False, {"id": 3}),
        ("INSERT INTO gold.items_synced VALUES (4, 'extra', 0, '[]')", False, {"id": 4}),
        ("UPDATE gold.items_synced SET tags = '[\"y\"]' WHERE id = 1", True, {"id": 1}),
    ],
)
def test_verify_detects_tampering(
    tmp_path: Path, pg_dsn: str, statement: str, rows_match: bool, key: dict[str, int]
) -> None:
    write_delta(tmp_path / "src", source_table())
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    sync_table(table, pg_dsn)
    clean = verify_table(table, pg_dsn)
    assert clean.content_matches and clean.postgres_rows == 3
    tamper(pg_dsn, statement)
    dirty = verify_table(table, pg_dsn)
    assert not dirty.content_matches and dirty.rows_match is rows_match
    assert key in dirty.differing_keys
    assert "--full-refresh" in dirty.describe()
    assert fetch(pg_dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'reverse_etl'") == [
        (1,)
    ]


def test_verify_compares_with_the_checkpoint_version_not_the_latest(
    tmp_path: Path, pg_dsn: str
) -> None:
    write_delta(tmp_path / "src", source_table())
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    sync_table(table, pg_dsn)
    later = pa.table(
        {
            "id": pa.array([9], pa.int64()),
            "v": ["later"],
            "f": pa.array([2.0]),
            "tags": pa.array([["z"]], pa.list_(pa.string())),
        }
    )
    write_delta(tmp_path / "src", later)
    result = verify_table(table, pg_dsn)
    assert result.content_matches and result.version == 0


def test_verify_before_any_sync_says_so(tmp_path: Path, pg_dsn: str) -> None:
    write_delta(tmp_path / "src", source_table())
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    with pytest.raises(SpecError, match="no checkpoint to verify"):
        verify_table(table, pg_dsn)


def test_cli_verify_and_delete(tmp_path: Path, pg_dsn: str) -> None:
    write_delta(tmp_path / "lake/a/b/items", source_table())
    spec = tmp_path / "spec.yaml"
    entry = {"name": NAME, "source": "a.b.items", "primary_key": ["id"]}
    spec.write_text(yaml.safe_dump({"lake_root": str(tmp_path / "lake"), "synced_tables": [entry]}))
    env = {**os.environ, "REVERSE_ETL_SPEC": str(spec), "REVERSE_ETL_PG_DSN": pg_dsn}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "reverse_etl_assets.cli", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    assert cli("sync", NAME).returncode == 0
    ok = cli("verify", NAME)
    assert ok.returncode == 0 and "Postgres equals Delta version 0 (3 rows" in ok.stdout
    tamper(pg_dsn, "UPDATE gold.items_synced SET v = 'x' WHERE id = 1")
    bad = cli("verify", NAME)
    assert bad.returncode == 1 and "{'id': 1}" in bad.stdout

    kept = cli("delete", NAME)
    assert kept.returncode == 0 and "kept as an ordinary table" in kept.stdout
    assert table_exists(pg_dsn, "gold", "items_synced")
    with psycopg.connect(pg_dsn) as conn:  # no longer guarded
        conn.execute("INSERT INTO gold.items_synced (id) VALUES (100)")
    status = cli("status", "--json")
    assert '"last_synced_version": null' in status.stdout
    again = cli("sync", NAME)  # declared again: a fresh initial snapshot
    assert again.returncode == 0 and "3 rows copied" in again.stdout
    dropped = cli("delete", NAME, "--drop-table")
    assert dropped.returncode == 0 and "dropped" in dropped.stdout
    assert not table_exists(pg_dsn, "gold", "items_synced")


def test_delete_refuses_while_a_sync_holds_the_table(tmp_path: Path, pg_dsn: str) -> None:
    write_delta(tmp_path / "src", source_table())
    sync_table(one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"]), pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"reverse_etl:{NAME}",))
        with pytest.raises(Exception, match="running; stop it and retry"):
            delete_synced_table(NAME, pg_dsn, drop_table=True)
    assert table_exists(pg_dsn, "gold", "items_synced")


def test_asset_checks_pass_then_fail_with_error(tmp_path: Path, pg_dsn: str) -> None:
    write_delta(tmp_path / "src", source_table())
    spec = spec_of(tmp_path, {"name": NAME, "source": str(tmp_path / "src"), "primary_key": ["id"]})
    defs = build_definitions(spec)
    assets = [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
    checks = list(defs.asset_checks or [])
    resources = postgres_resources(pg_dsn)
    result = dg.materialize(
        [*assets, *checks], resources=resources, selection=[dg.AssetKey(NAME.split("."))]
    )
    evaluations = result.get_asset_check_evaluations()
    assert {e.check_name: e.passed for e in evaluations} == {
        "row_count_matches_delta": True,
        "content_matches_delta": True,
    }
    tamper(pg_dsn, "DELETE FROM gold.items_synced WHERE id = 1")
    checked = dg.materialize(
        [*assets, *checks],
        resources=resources,
        selection=dg.AssetSelection.checks_for_assets(dg.AssetKey(NAME.split("."))),
        raise_on_error=False,
    )
    failed = {e.check_name: e for e in checked.get_asset_check_evaluations()}
    assert not failed["row_count_matches_delta"].passed
    assert failed["content_matches_delta"].severity == dg.AssetCheckSeverity.ERROR
    assert failed["content_matches_delta"].metadata["postgres_rows"].value == 2


def test_progress_lines() -> None:
    line = describe_progress(500_000, 2_000_000, 2.0, bar=True)
    assert line.startswith("[#######")
    assert "25%" in line and "500,000 / 2,000,000 rows" in line
    assert "250,000 rows/s" in line and "ETA 6s" in line
    assert describe_progress(10, None, 1.0) == "10 rows  10 rows/s"
    assert "ETA 1h06m" in describe_progress(1, 4_000, 1.0)


def every_type_source() -> pa.Table:
    """The hash tests' table of every mapped type, less interval (Delta has none)."""
    return wide_table().drop_columns(["dur"])


@pytest.mark.parametrize(
    ("statement", "kind", "key"),
    [
        ("UPDATE gold.items_synced SET dec = -dec WHERE id = 4", "changed", 4),
        ("UPDATE gold.items_synced SET d10 = -d10 WHERE id = 4", "changed", 4),
        ("UPDATE gold.items_synced SET d18 = d18 - 1 WHERE id = 2", "changed", 2),
        ("UPDATE gold.items_synced SET f8 = NULL WHERE id = 0", "changed", 0),
        ("UPDATE gold.items_synced SET f4 = 'NaN' WHERE id = 5", "changed", 5),
        # A numeric NaN, which only Postgres can hold; d18 is NULL in the source at id 7.
        ("UPDATE gold.items_synced SET d10 = 'NaN' WHERE id = 1", "changed", 1),
        ("UPDATE gold.items_synced SET d18 = 'NaN' WHERE id = 7", "changed", 7),
        ("UPDATE gold.items_synced SET s = NULL WHERE id = 0", "changed", 0),
        ("UPDATE gold.items_synced SET ls = ls || ' ' WHERE id = 6", "changed", 6),
        ("UPDATE gold.items_synced SET bin = '\\x00' WHERE id = 1", "changed", 1),
        ("UPDATE gold.items_synced SET i1 = -i1 WHERE id = 3", "changed", 3),
        ("UPDATE gold.items_synced SET b = NOT b WHERE id = 1", "changed", 1),
        ("UPDATE gold.items_synced SET d = d + 1 WHERE id = 2", "changed", 2),
        ("UPDATE gold.items_synced SET ts = ts + '1 microsecond' WHERE id = 3", "changed", 3),
        ("UPDATE gold.items_synced SET ntz = ntz - interval '1 day' WHERE id = 1", "changed", 1),
        ("UPDATE gold.items_synced SET st = jsonb_set(st, '{zz}', '3') WHERE id = 3", "changed", 3),
        ("UPDATE gold.items_synced SET map = '{\"k\": 1.5}' WHERE id = 0", "changed", 0),
        ("UPDATE gold.items_synced SET arr = '[1, 3]' WHERE id = 0", "changed", 0),
        ("DELETE FROM gold.items_synced WHERE id = 7", "missing", 7),
        ("INSERT INTO gold.items_synced (id) VALUES (100)", "extra", 100),
    ],
)
def test_verify_names_each_kind_of_tampering_across_types(
    tmp_path: Path, pg_dsn: str, statement: str, kind: str, key: int
) -> None:
    write_delta(tmp_path / "src", every_type_source())
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    sync_table(table, pg_dsn)
    tamper(pg_dsn, "UPDATE gold.items_synced SET st = st::text::jsonb")  # same JSON: still equal
    clean = verify_table(table, pg_dsn)
    assert clean.content_matches, clean.describe()
    tamper(pg_dsn, statement)
    dirty = verify_table(table, pg_dsn)
    assert not dirty.content_matches
    assert dirty.differences == (Difference(kind=kind, key={"id": key}),)  # type: ignore[arg-type]
    assert f"{{'id': {key}}} (" in dirty.describe()


def test_verify_follows_the_sync_rules_for_null_keys_nul_bytes_and_latest_rows(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = pa.table(
        {
            "id": pa.array([1, 1, 2, None, 3], pa.int64()),
            "ts": pa.array([10, 20, 5, 1, None], pa.int64()),
            "v": ["old", "new", "a\x00b", "no key", None],
        }
    )
    write_delta(tmp_path / "src", source)
    table = one_table(
        tmp_path,
        source=str(tmp_path / "src"),
        primary_key=["id"],
        timeseries_key="ts",
        on_invalid_characters="strip",
    )
    sync_table(table, pg_dsn)
    clean = verify_table(table, pg_dsn)
    assert clean.content_matches and clean.postgres_rows == 3, clean.describe()
    tamper(pg_dsn, "UPDATE gold.items_synced SET v = 'old', ts = 10 WHERE id = 1")
    dirty = verify_table(table, pg_dsn)
    assert dirty.differences == (Difference(kind="changed", key={"id": 1}),)


def test_verify_writes_nothing_to_postgres(tmp_path: Path, pg_dsn: str) -> None:
    write_delta(tmp_path / "src", source_table())
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    sync_table(table, pg_dsn)
    relations = "SELECT count(*) FROM pg_class WHERE relkind = 'r'"
    before = fetch(pg_dsn, relations)
    tamper(pg_dsn, "DELETE FROM gold.items_synced WHERE id = 1")
    assert not verify_table(table, pg_dsn).content_matches
    assert fetch(pg_dsn, relations) == before


def test_many_differences_are_sampled_from_a_few_buckets(tmp_path: Path, pg_dsn: str) -> None:
    write_delta(tmp_path / "src", pa.table({"id": pa.array(range(20_000), pa.int64())}))
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    sync_table(table, pg_dsn)
    tamper(pg_dsn, "DELETE FROM gold.items_synced WHERE id % 2 = 0")
    dirty = verify_table(table, pg_dsn)
    assert dirty.postgres_rows == 10_000 and dirty.delta_rows == 20_000
    assert len(dirty.differences) == SAMPLE_KEYS
    assert all(d.kind == "missing" and d.key["id"] % 2 == 0 for d in dirty.differences)


def test_an_empty_source_verifies_against_an_empty_table(tmp_path: Path, pg_dsn: str) -> None:
    write_delta(tmp_path / "src", source_table().slice(0, 0))
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    sync_table(table, pg_dsn)
    assert verify_table(table, pg_dsn).content_matches
    tamper(pg_dsn, "INSERT INTO gold.items_synced (id) VALUES (1)")
    dirty = verify_table(table, pg_dsn)
    assert dirty.differences == (Difference(kind="extra", key={"id": 1}),)
    assert "{'id': 1} (extra in Postgres)" in dirty.describe()


def test_verify_catches_values_swapped_between_rows(tmp_path: Path, pg_dsn: str) -> None:
    """Each column still holds the same values, under the wrong keys."""
    names = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "v": ["alice", "bob", "carol"]})
    write_delta(tmp_path / "src", names)
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    sync_table(table, pg_dsn)
    tamper(
        pg_dsn,
        "UPDATE gold.items_synced SET v = CASE id WHEN 1 THEN 'bob' ELSE 'alice' END "
        "WHERE id IN (1, 2)",
    )
    dirty = verify_table(table, pg_dsn)
    assert dirty.rows_match and not dirty.content_matches
    assert sorted(d.key["id"] for d in dirty.differences) == [1, 2]
    assert {d.kind for d in dirty.differences} == {"changed"}


def test_verify_catches_values_swapped_between_columns_of_a_row(
    tmp_path: Path, pg_dsn: str
) -> None:
    """The row still holds the same values, in the wrong columns of the same type."""
    names = pa.table(
        {"id": pa.array([1, 2], pa.int64()), "first": ["ada", "bob"], "last": ["lovelace", "x"]}
    )
    write_delta(tmp_path / "src", names)
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    sync_table(table, pg_dsn)
    assert verify_table(table, pg_dsn).content_matches
    tamper(pg_dsn, 'UPDATE gold.items_synced SET "first" = "last", "last" = "first" WHERE id = 1')
    dirty = verify_table(table, pg_dsn)
    assert dirty.differences == (Difference(kind="changed", key={"id": 1}),)


def test_verify_reports_an_infinite_date_or_timestamp_as_a_change(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Only Postgres can hold 'infinity': the row differs, the comparison does not fail."""
    source = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "d": pa.array([datetime.date(2024, 1, 2)] * 2, pa.date32()),
            "ts": pa.array(
                [datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC)] * 2,
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    write_delta(tmp_path / "src", source)
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    sync_table(table, pg_dsn)
    tamper(pg_dsn, "UPDATE gold.items_synced SET d = 'infinity' WHERE id = 1")
    tamper(pg_dsn, "UPDATE gold.items_synced SET ts = '-infinity' WHERE id = 2")
    dirty = verify_table(table, pg_dsn)
    assert dirty.rows_match and not dirty.content_matches
    assert dirty.differences == (
        Difference(kind="changed", key={"id": 1}),
        Difference(kind="changed", key={"id": 2}),
    )


def test_verify_reports_a_row_with_a_numeric_nan_key_as_extra(tmp_path: Path, pg_dsn: str) -> None:
    """A NaN key, which only Postgres can hold, is an extra row, not a failed comparison."""
    source = pa.table(
        {
            "id": pa.array([Decimal("1.50"), Decimal("2.25")], pa.decimal128(10, 2)),
            "v": ["a", "b"],
        }
    )
    write_delta(tmp_path / "src", source)
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"])
    sync_table(table, pg_dsn)
    tamper(pg_dsn, "INSERT INTO gold.items_synced VALUES ('NaN', 'x')")
    dirty = verify_table(table, pg_dsn)
    assert not dirty.rows_match
    assert [(d.kind, str(d.key["id"])) for d in dirty.differences] == [("extra", "NaN")]
