"""Tests of syncing Delta tables that live in an S3-compatible object store (moto on loopback).

Sources are an s3:// URI or a three-part name under an s3:// lake_root, read with storage_options.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pyarrow as pa
import pytest
import requests
import yaml
from deltalake import DeltaTable, write_deltalake
from moto.server import ThreadedMotoServer

from reverse_etl_assets.delta.reader import open_source
from reverse_etl_assets.errors import ReverseEtlError
from reverse_etl_assets.pipelines.delta_to_postgres import states
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.postgres.state import read_state
from reverse_etl_assets.settings import ENV_LAKE_ROOT
from reverse_etl_assets.spec import load_spec

BUCKET = "bucket"
SOURCE_URI = f"s3://{BUCKET}/lake/analytics/gold/items"
FIRST = pa.table(
    {
        "id": pa.array([1, 2, 3], pa.int64()),
        "name": ["a", None, "ü"],
        "day": [date(2024, 1, 1), date(1, 1, 1), None],
    }
)
SECOND = pa.table(
    {"id": pa.array([4], pa.int64()), "name": ["d"], "day": pa.array([None], pa.date32())}
)


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict[str, str]]:
    """delta-rs storage options of a user of a fresh moto S3 server that checks signatures."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        # Moto accepts any key until told to authenticate: make a real user first, then turn it on.
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
            region_name="us-east-1",
        )
        iam.create_user(UserName="lake")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="lake", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="lake")["AccessKey"]
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
            region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)
        options = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            # delta-rs needs a lock or conditional writes for concurrent writers; one writer here.
            "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
        }
        write_deltalake(SOURCE_URI, FIRST, storage_options=options)
        write_deltalake(SOURCE_URI, SECOND, mode="append", storage_options=options)
        yield options
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)
        server.stop()


@pytest.fixture(autouse=True)
def _no_lake_root_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_LAKE_ROOT, raising=False)


def _write_spec(path: Path, tables: list[dict[str, Any]], **top: Any) -> Path:
    path.write_text(yaml.safe_dump({**top, "synced_tables": tables}))
    return path


def _pg_rows(dsn: str, schema: str, table: str) -> list[tuple[Any, ...]]:
    query = psycopg.sql.SQL("SELECT id, name, day FROM {} ORDER BY id").format(
        psycopg.sql.Identifier(schema, table)
    )
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def _table_exists(dsn: str, qualified: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (qualified,)).fetchone()
    return row is not None and row[0] is not None


def test_sync_from_s3_uri_and_from_s3_lake_root(
    tmp_path: Path, pg_dsn: str, s3_options: dict[str, str]
) -> None:
    spec = load_spec(
        _write_spec(
            tmp_path / "synced_tables.yaml",
            [
                {
                    "name": "lakebase.gold.items_by_uri",
                    "source": SOURCE_URI,
                    "primary_key": ["id"],
                    "storage_options": s3_options,
                },
                {
                    "name": "lakebase.gold.items_by_name",
                    "source": "analytics.gold.items",
                    "primary_key": ["id"],
                    "storage_options": s3_options,
                },
            ],
            lake_root=f"s3://{BUCKET}/lake",
        )
    )
    assert {t.source_uri for t in spec.synced_tables} == {SOURCE_URI}
    delta = DeltaTable(SOURCE_URI, storage_options=s3_options).to_pyarrow_table().sort_by("id")
    expected = list(
        zip(
            delta["id"].to_pylist(),
            delta["name"].to_pylist(),
            delta["day"].to_pylist(),
            strict=True,
        )
    )
    assert len(expected) == 4

    for table in spec.synced_tables:
        result = sync_table(table, pg_dsn)

        assert (result.version, result.rows) == (1, 4)
        assert _pg_rows(pg_dsn, table.pg_schema, table.pg_table) == expected
        with psycopg.connect(pg_dsn) as conn:
            stored = read_state(conn, table.name)
        assert stored is not None
        assert (stored.state, stored.last_synced_version) == (states.ONLINE_NO_PENDING_UPDATE, 1)


def test_wrong_credentials_fail_clearly_and_write_nothing(
    tmp_path: Path, pg_dsn: str, s3_options: dict[str, str]
) -> None:
    wrong = {**s3_options, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    spec = load_spec(
        _write_spec(
            tmp_path / "synced_tables.yaml",
            [
                {
                    "name": "lakebase.gold.items",
                    "source": SOURCE_URI,
                    "primary_key": ["id"],
                    "storage_options": wrong,
                }
            ],
        )
    )
    [table] = spec.synced_tables

    with pytest.raises(ReverseEtlError) as failure:
        sync_table(table, pg_dsn)

    message = str(failure.value)
    assert SOURCE_URI in message
    assert "privileges" in message
    assert "403" in message
    assert "not-the-secret" not in message
    assert not _table_exists(pg_dsn, "gold.items")
    with psycopg.connect(pg_dsn) as conn:
        stored = read_state(conn, table.name)
    assert stored is not None
    assert stored.state == states.OFFLINE_FAILED
    assert stored.last_synced_version is None
    assert SOURCE_URI in stored.message


def test_wrong_credentials_are_terminal(s3_options: dict[str, str]) -> None:
    wrong = {**s3_options, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}

    with pytest.raises(ReverseEtlError) as failure:
        open_source(SOURCE_URI, storage_options=wrong)

    assert failure.value.terminal
