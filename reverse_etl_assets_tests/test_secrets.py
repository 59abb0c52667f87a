"""No password, in any form, in any output: every path that takes the Postgres DSN is tried with
DSNs whose password libpq's own parser would quote back (the CLI's path is in test_errors.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from reverse_etl_assets.definitions import build_definitions
from reverse_etl_assets.dev import embedded_postgres
from reverse_etl_assets.errors import ConfigError, ReverseEtlError
from reverse_etl_assets.orchestration import failures as failures_module
from reverse_etl_assets.orchestration.continuous import follower_job
from reverse_etl_assets.orchestration.io_manager import PostgresTableIOManager
from reverse_etl_assets.pipelines.delta_to_postgres.follow import follow_table
from reverse_etl_assets.postgres.connect import redact
from reverse_etl_assets.postgres.replication.session import connect_replication, connect_session
from reverse_etl_assets.settings import ENV_PG_DSN, ENV_SPEC
from reverse_etl_assets.spec import load_spec
from reverse_etl_assets_tests.helpers import postgres_resources, write_delta

DAGSTER_CLI = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "reverse_etl_assets"]
PASSWORD = "Zq9%Kp!Sekret"
FORMS = (PASSWORD, "Kp!Sekret", "Sekret", "Zq9")
BAD_DSNS = {
    "uri, bad percent-encoding": f"postgresql://u:{PASSWORD}@127.0.0.1/db",
    "key=value, unterminated quote": f"host=127.0.0.1 password='{PASSWORD}",
    "key=value, stray word after the password": "host=127.0.0.1 password=Zq9 Kp!Sekret",
    "well formed, unreachable": "postgresql://u:Zq9%25Kp%21Sekret@127.0.0.1:1/db",
}


def assert_no_password(text: str) -> None:
    for form in FORMS:
        assert form not in text, text


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    write_delta(src, pa.table({"id": pa.array([1], pa.int64())}))
    path = tmp_path / "synced_tables.yaml"
    path.write_text(
        "synced_tables:\n"
        f"  - {{name: a.b.snap, source: '{src}', primary_key: [id]}}\n"
        f"  - {{name: a.b.cont, source: '{src}', primary_key: [id], mode: continuous}}\n"
    )
    return path


def _event_log(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(str(event) for event in instance.all_logs(run_id))


@pytest.mark.parametrize("dsn", BAD_DSNS.values(), ids=BAD_DSNS.keys())
def test_follower_refuses_a_bad_dsn_without_quoting_it(
    spec_file: Path, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The follower parsed the DSN with libpq's parser directly: its message quoted the password.
    (An unreachable server is retried until max_seconds: only its log lines are checked.)"""
    caplog.set_level(logging.DEBUG)
    message = ""
    try:
        follow_table(load_spec(spec_file).table("a.b.cont"), dsn, max_seconds=0.5)
    except ReverseEtlError as exc:
        message = str(exc)
    assert_no_password(message + caplog.text)


@pytest.mark.parametrize("dsn", BAD_DSNS.values(), ids=BAD_DSNS.keys())
def test_dagster_follower_run_keeps_the_password_out_of_the_event_log(
    spec_file: Path, dsn: str
) -> None:
    table = load_spec(spec_file).table("a.b.cont")
    instance = dg.DagsterInstance.ephemeral()
    result = follower_job(table).execute_in_process(
        run_config={"ops": {"follow__a__b__cont__op": {"config": {"max_seconds": 0.5}}}},
        resources=postgres_resources(dsn),
        instance=instance,
        raise_on_error=False,
    )
    assert_no_password(_event_log(instance, result.run_id))


@pytest.mark.parametrize("dsn", BAD_DSNS.values(), ids=BAD_DSNS.keys())
def test_dagster_asset_and_io_manager_keep_the_password_out(
    spec_file: Path, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(failures_module, "RETRY_SECONDS", 0.0)  # an unreachable server retries
    defs = build_definitions(load_spec(spec_file))
    assets = [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition | dg.SourceAsset)]
    instance = dg.DagsterInstance.ephemeral()
    synced = dg.materialize(
        assets,
        selection=[dg.AssetKey(["a", "b", "snap"])],
        resources=postgres_resources(dsn),
        instance=instance,
        raise_on_error=False,
    )
    assert not synced.success
    assert_no_password(_event_log(instance, synced.run_id))

    @dg.asset(key=["s", "t"], io_manager_key="pg")
    def produced() -> pa.Table:
        return pa.table({"id": [1]})

    stored = dg.materialize(
        [produced],
        resources={"pg": PostgresTableIOManager(dsn=dsn)},
        instance=instance,
        raise_on_error=False,
    )
    assert not stored.success
    assert_no_password(_event_log(instance, stored.run_id))


@pytest.mark.slow
def test_dagster_cli_materialize_keeps_the_password_out(spec_file: Path, tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    env = {
        **os.environ,
        ENV_SPEC: str(spec_file),
        ENV_PG_DSN: BAD_DSNS["uri, bad percent-encoding"],
        "DAGSTER_HOME": str(home),
    }
    run = subprocess.run(
        [*DAGSTER_CLI, "--select", "a/b/snap"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "is not a valid libpq connection string" in run.stdout + run.stderr
    assert_no_password(run.stdout + run.stderr)


@pytest.mark.parametrize("connect", [connect_session, connect_replication])
@pytest.mark.parametrize(
    "dsn", [d for k, d in BAD_DSNS.items() if "unreachable" not in k], ids=lambda d: d[:12]
)
def test_replication_connections_refuse_a_bad_dsn_without_quoting_it(
    connect: Callable[[str], object], dsn: str
) -> None:
    with pytest.raises(ConfigError) as info:
        connect(dsn)
    assert_no_password(str(info.value))


def test_dev_dagster_env_refuses_a_bad_dsn_without_quoting_it() -> None:
    with pytest.raises(ConfigError) as info:
        embedded_postgres.dagster_env(BAD_DSNS["key=value, unterminated quote"])
    assert_no_password(str(info.value))


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=x password='{PASSWORD}",
        f"host=x password = '{PASSWORD}' 'oops",
        f"host=x password={PASSWORD} 'oops",
    ],
)
def test_redact_finds_the_password_of_an_unparsable_key_value_dsn(dsn: str) -> None:
    assert_no_password(redact(f"something about {PASSWORD} failed", dsn))
