"""The demo in `dagster dev` (webserver and daemon) as a user sees it in a real Chromium: after the
demo's syncs every synced table is materialized with its checks passed; a new Delta commit turns
its table stale with no Observe click; the next sync makes it fresh again.

Slow by nature: it waits for the daemon's own observation (once a minute) and automation ticks.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from playwright.sync_api import Page, expect

from reverse_etl_assets.dev.demo_app import write_demo_activity
from reverse_etl_assets.dev.demo_lake import ensure_demo_lake
from reverse_etl_assets.orchestration.lakehouse_translator import GROUP as LAKEHOUSE_GROUP
from reverse_etl_assets.orchestration.translator import GROUP, SOURCE_GROUP
from reverse_etl_assets.postgres.connect import connect
from reverse_etl_assets.settings import DEFAULT_SPEC, ENV_LAKE_ROOT, ENV_PG_DSN, ENV_SPEC
from reverse_etl_assets.spec import load_spec
from reverse_etl_assets_tests.helpers import run_cli
from reverse_etl_assets_tests.test_ui import (
    CHROMIUM,
    PROJECT_ROOT,
    _browser,
    _dagster_storage_env,
    _node,
    _skip_welcome_dialog,
    _webserver,
)

pytestmark = [
    pytest.mark.ui,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"needs Chromium at {CHROMIUM}: `apt-get install -y chromium` (.ci/run does)",
    ),
]

DEMO_ROWS = 300
# The daemon observes sources once a minute and evaluates automation every 30 s; a run it
# launches then takes a few seconds more on two busy cores.
DAEMON_WAIT_MS = 240_000
# Each synced table has two equality checks; the node says how many of them passed.
ALL_CHECKS_PASSED = re.compile(r"2\s*/\s*2\s*Passed")
EVERY_CHECK_PASSED = re.compile(r"(\d+)\s*/\s*\1\s*Passed")
PROFILES = dg.AssetKey(["lakebase", "gold", "user_profiles_synced"])
PROFILES_SOURCE = ["analytics", "gold", "user_profiles"]


@pytest.fixture
def demo_env(tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """What `make demo` leaves behind, in a temporary project: the demo lake, the demo app's
    writes, and `reverse-etl sync --all` recorded in the Dagster instance of DAGSTER_HOME."""
    spec = tmp_path / "synced_tables.yaml"
    shutil.copy(DEFAULT_SPEC, spec)
    ensure_demo_lake(Path(load_spec(spec).lake_root), rows=DEMO_ROWS)
    with connect(pg_dsn, autocommit=True) as conn:
        write_demo_activity(conn)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.delenv(ENV_LAKE_ROOT, raising=False)
    env = {
        ENV_SPEC: str(spec),
        ENV_PG_DSN: pg_dsn,
        "DAGSTER_HOME": str(home),
        **_dagster_storage_env(pg_dsn),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.get():
        pass  # creates Dagster's tables before two processes race to
    synced = run_cli(dict(os.environ), "sync", "--all")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    return dict(os.environ)


def test_demo_fresh_after_sync_stale_after_a_commit_fresh_again(
    tmp_path: Path, demo_env: dict[str, str]
) -> None:
    spec = load_spec(Path(demo_env[ENV_SPEC]))
    home = Path(demo_env["DAGSTER_HOME"])
    # As `make dev` runs it: from DAGSTER_HOME, so Dagster reads its dagster.yaml without a word.
    with _webserver(tmp_path, dev=True, cwd=home) as server:
        server.wait_until_serving()
        _skip_welcome_dialog(server.url)
        with _browser(DAEMON_WAIT_MS) as page:
            _open_graph(page, server.url)
            # The CLI's syncs are in the instance, and the daemon ran their checks.
            for table in spec.synced_tables:
                node = _node(page, dg.AssetKey(table.asset_key_path))
                expect(node).to_contain_text("Materialized")
                expect(node).to_contain_text(ALL_CHECKS_PASSED)
                expect(node).not_to_contain_text("Unsynced")
                expect(node).not_to_contain_text("Failed")

            # And the lakehouse sync's drain: each history and mirror, with its checks.
            for sync in spec.lakehouse_syncs:
                for _, name in sync.tables:
                    history = _node(page, dg.AssetKey([*sync.target_parts, f"lb_{name}_history"]))
                    expect(history).to_contain_text("Materialized")
                    expect(history).to_contain_text(EVERY_CHECK_PASSED)
                    # The Postgres table and its mirror share a label; the mirror is Delta.
                    labelled = page.locator("svg foreignObject").filter(
                        has=page.get_by_text(name, exact=True)
                    )
                    mirror = labelled.filter(has_text="delta").last
                    expect(mirror).to_contain_text("Materialized")
                    expect(mirror).to_contain_text(EVERY_CHECK_PASSED)

            profiles = _node(page, PROFILES)
            source = Path(spec.lake_root).joinpath(*PROFILES_SOURCE)
            _commit_one_more_row(source)
            # Nobody clicks Observe: the daemon observes the new version on its own.
            expect(profiles).to_contain_text("Unsynced")

            synced = run_cli(demo_env, "sync", "lakebase.gold.user_profiles_synced")
            assert synced.returncode == 0, synced.stdout + synced.stderr
            expect(profiles).not_to_contain_text("Unsynced")
            expect(profiles).to_contain_text(ALL_CHECKS_PASSED)
            page.screenshot(path=str(tmp_path / "fresh-again.png"))
    assert "will not be used to configure Dagster" not in server.log.read_text(errors="replace")


def _open_graph(page: Page, url: str) -> None:
    page.goto(f"{url}/asset-groups")
    for group in (SOURCE_GROUP, GROUP, LAKEHOUSE_GROUP):
        expect(page.locator("svg foreignObject").get_by_text(group, exact=True)).to_be_visible()
    page.keyboard.press("Alt+e")  # the graph's "Expand all groups"


def _commit_one_more_row(path: Path) -> None:
    """Append a copy of the first row under a new key: a new Delta version."""
    current = DeltaTable(str(path)).to_pyarrow_table()
    row = current.slice(0, 1)
    keys = pa.array([current["user_id"].to_pylist()[-1] + 10_000], pa.int64())
    row = row.set_column(row.schema.get_field_index("user_id"), "user_id", keys)
    write_deltalake(str(path), row, mode="append")
