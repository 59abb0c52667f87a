"""The one error policy: library errors translated at the boundary, a retry only where it can
help, and a user's mistake answered with a message and an exit status, never a traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
import yaml

from reverse_etl_assets.errors import ConfigError, TransientError, is_transient, translate
from reverse_etl_assets.postgres.connect import connect, redact
from reverse_etl_assets_tests.helpers import run_cli, write_delta

NAME = "lakebase.gold.items_synced"
PASSWORD = "Zq9%Kp!Sekret"


def cli_env(tmp_path: Path, dsn: str | None, **entry: object) -> dict[str, str]:
    write_delta(tmp_path / "lake/analytics/gold/items", pa.table({"id": pa.array([1], pa.int64())}))
    table = {"name": NAME, "source": "analytics.gold.items", "primary_key": ["id"], **entry}
    spec = tmp_path / "synced_tables.yaml"
    spec.write_text(yaml.safe_dump({"lake_root": str(tmp_path / "lake"), "synced_tables": [table]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVERSE_ETL_")}
    env["REVERSE_ETL_SPEC"] = str(spec)
    if dsn is not None:
        env["REVERSE_ETL_PG_DSN"] = dsn
    return env


def assert_clean_failure(result: subprocess.CompletedProcess[str], *words: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    for word in words:
        assert word in output, output


@pytest.mark.parametrize(
    "command", [["status"], ["sync", NAME], ["verify", NAME], ["delete", NAME]]
)
def test_a_malformed_dsn_is_a_message_without_the_password(
    tmp_path: Path, command: list[str]
) -> None:
    env = cli_env(tmp_path, f"postgresql://u:{PASSWORD}@127.0.0.1/db")
    result = run_cli(env, *command)
    assert_clean_failure(result, "REVERSE_ETL_PG_DSN is not a valid", "%25")
    for form in (PASSWORD, "Kp!Sekret", "Sekret"):
        assert form not in result.stdout + result.stderr


def test_a_role_that_does_not_exist_is_terminal(pg_dsn: str, tmp_path: Path) -> None:
    parts = pg_dsn.split("://", 1)
    dsn = f"{parts[0]}://no_such_role@{parts[1].split('@', 1)[-1]}"
    with pytest.raises(ConfigError, match="no_such_role"):
        connect(dsn)
    result = run_cli(cli_env(tmp_path, dsn), "sync", NAME)
    assert_clean_failure(result, "no_such_role", "Check the role")
    assert "transient" not in result.stderr


def test_an_unreachable_server_is_transient() -> None:
    with pytest.raises(TransientError):
        connect("postgresql://u@127.0.0.1:1/db?connect_timeout=2")


def test_a_missing_reader_role_fails_validate_and_sync(pg_dsn: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path, pg_dsn, readers=["app_reader_missing"])
    validate = run_cli(env, "validate")
    assert_clean_failure(validate, "app_reader_missing", "CREATE ROLE")
    synced = run_cli(env, "sync", NAME)
    assert_clean_failure(synced, "app_reader_missing", "`readers`")


def test_no_dsn_outside_development_says_what_to_set(tmp_path: Path) -> None:
    embedded = Path(__file__).resolve().parent.parent / "data" / "postgres"
    existed = embedded.exists()
    env = cli_env(tmp_path, None)
    result = run_cli(env, "status")
    assert_clean_failure(result, "REVERSE_ETL_PG_DSN is not set", "REVERSE_ETL_DEV=1")
    assert embedded.exists() == existed  # no development cluster created behind the user's back


def test_the_policy_translates_library_errors() -> None:
    assert is_transient(psycopg.errors.SerializationFailure("could not serialize"))
    assert is_transient(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert not is_transient(psycopg.OperationalError('FATAL:  role "x" does not exist'))
    assert not is_transient(psycopg.errors.InsufficientPrivilege("permission denied"))
    assert not is_transient(ValueError("a bug"))
    assert translate(ValueError("a bug")) is None


def test_redact_removes_every_form_of_the_password() -> None:
    dsn = "postgresql://u:p%40ss%25word@h/db"
    text = "failed for p%40ss%25word and p@ss%word"
    assert "p@ss" not in redact(text, dsn) and "p%40ss" not in redact(text, dsn)
    unparsable = "postgresql://u:p%40ss%25word%zz@h/db"
    assert "p%40ss" not in redact("bad p%40ss%25word%zz", unparsable)
