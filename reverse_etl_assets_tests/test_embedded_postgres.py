"""Tests of the embedded development cluster against real initdb / pg_ctl.

Covered: the port kept across restarts, clusters side by side, the replication settings.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance, asset, materialize

from reverse_etl_assets.dev import embedded_postgres
from reverse_etl_assets.dev.embedded_postgres import dagster_env, ensure_running, find_pg_bin, stop


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for one test's own cluster, stopped afterwards whatever happened."""
    data_dir = tmp_path / "pg"
    yield data_dir
    stop(data_dir)


def _port(dsn: str) -> int:
    return int(str(psycopg.conninfo.conninfo_to_dict(dsn)["port"]))


def _show(dsn: str, setting: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SHOW {setting}").fetchone()
    assert row is not None
    return str(row[0])


def test_find_pg_bin_returns_server_binaries() -> None:
    bin_dir = find_pg_bin()
    for tool in ("initdb", "pg_ctl", "postgres"):
        assert (bin_dir / tool).is_file()


def test_cluster_is_set_up_for_bulk_loads_and_logical_replication(cluster_dir: Path) -> None:
    dsn = ensure_running(cluster_dir)

    assert dsn == f"postgresql://postgres@127.0.0.1:{_port(dsn)}/postgres"
    assert _show(dsn, "wal_level") == "logical"
    assert _show(dsn, "max_connections") == "200"
    assert _show(dsn, "server_encoding") == "UTF8"
    assert _show(dsn, "fsync") == "on"
    assert _show(dsn, "listen_addresses") == "127.0.0.1"


def test_ensure_running_is_idempotent_and_port_survives_restart(cluster_dir: Path) -> None:
    dsn = ensure_running(cluster_dir)
    assert ensure_running(cluster_dir) == dsn
    assert (cluster_dir / "port").read_text().strip() == str(_port(dsn))

    stop(cluster_dir)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2).close()

    assert ensure_running(cluster_dir) == dsn
    assert _show(dsn, "wal_level") == "logical"


def test_stop_is_idempotent(cluster_dir: Path, tmp_path: Path) -> None:
    stop(tmp_path / "never-created")
    ensure_running(cluster_dir)

    stop(cluster_dir)
    stop(cluster_dir)

    assert not (cluster_dir / "pgdata" / "postmaster.pid").exists()


def test_second_cluster_gets_its_own_port(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    try:
        dsn_a, dsn_b = ensure_running(first), ensure_running(second)
        assert _port(dsn_a) != _port(dsn_b)
        assert _show(dsn_a, "data_directory") != _show(dsn_b, "data_directory")
    finally:
        stop(first)
        stop(second)


def test_taken_port_is_replaced_and_remembered(cluster_dir: Path) -> None:
    old_port = _port(ensure_running(cluster_dir))
    stop(cluster_dir)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        dsn = ensure_running(cluster_dir)

    assert _port(dsn) != old_port
    assert (cluster_dir / "port").read_text().strip() == str(_port(dsn))
    assert _show(dsn, "port") == str(_port(dsn))


def test_long_directory_puts_the_socket_under_tmp(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "pg"
    try:
        dsn = ensure_running(deep)
        socket_dir = Path(_show(dsn, "unix_socket_directories"))
        assert not socket_dir.is_relative_to(deep)
        assert (socket_dir / f".s.PGSQL.{_port(dsn)}").exists()
    finally:
        stop(deep)


def test_dagster_env_creates_the_dagster_database(pg_server_dsn: str) -> None:
    env = dagster_env(pg_server_dsn)
    assert env == dagster_env(pg_server_dsn)

    assert env["DAGSTER_PG_DB"] == embedded_postgres.DAGSTER_DATABASE
    assert env["DAGSTER_PG_PORT"] == str(_port(pg_server_dsn))
    with psycopg.connect(
        host=env["DAGSTER_PG_HOST"],
        port=env["DAGSTER_PG_PORT"],
        user=env["DAGSTER_PG_USER"],
        password=env["DAGSTER_PG_PASSWORD"] or None,
        dbname=env["DAGSTER_PG_DB"],
    ) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("dagster",)


def test_pg_dsn_is_a_fresh_database_of_its_own(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert row is not None and row[0].startswith("test_")
    assert tables == (0,)
    assert pg_dsn.startswith("postgresql://")


def test_cli_prints_dsn_and_dagster_env(
    cluster_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_PG_PORT", raising=False)
    monkeypatch.setenv("DAGSTER_PG_HOST", "db.example")

    assert embedded_postgres.main(["dsn", str(cluster_dir)]) == 0
    dsn = capsys.readouterr().out.strip()
    assert embedded_postgres.main(["env", str(cluster_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()

    assert f"export DAGSTER_PG_PORT={_port(dsn)}" in lines
    assert "export DAGSTER_PG_PASSWORD=''" in lines
    assert not any(line.startswith("export DAGSTER_PG_HOST=") for line in lines)


def test_dagster_yaml_keeps_runs_in_the_dagster_database(
    pg_server_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in dagster_env(pg_server_dsn).items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).parents[1] / "dagster.yaml", home / "dagster.yaml")

    @asset
    def one() -> int:
        return 1

    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = materialize([one], instance=instance)
        stored = instance.get_run_by_id(result.run_id)

    assert result.success
    assert stored is not None and stored.is_success
