"""The Dagster UI in a real headless Chromium: the asset graph, metadata and check results.

Runs `dagster-webserver` on the project's workspace.yaml and dagster.yaml (storage in Postgres).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright
from psycopg.conninfo import conninfo_to_dict

from reverse_etl_assets.definitions import load_definitions
from reverse_etl_assets.orchestration.checks import CONTENT_CHECK, ROW_COUNT_CHECK
from reverse_etl_assets.orchestration.lakehouse_checks import (
    CONTENT_CHECK as LAKEHOUSE_CONTENT_CHECK,
)
from reverse_etl_assets.orchestration.lakehouse_checks import RETAINED_WAL_CHECK
from reverse_etl_assets.orchestration.lakehouse_checks import (
    ROW_COUNT_CHECK as LAKEHOUSE_ROW_COUNT_CHECK,
)
from reverse_etl_assets.orchestration.lakehouse_resource import LakehouseSyncResource
from reverse_etl_assets.orchestration.lakehouse_translator import GROUP as LAKEHOUSE_GROUP
from reverse_etl_assets.orchestration.lakehouse_translator import POSTGRES_GROUP
from reverse_etl_assets.orchestration.translator import GROUP, SOURCE_GROUP
from reverse_etl_assets.settings import ENV_LAKE_ROOT, ENV_PG_DSN, ENV_SPEC, PROJECT_ROOT
from reverse_etl_assets_tests.helpers import postgres_resources, write_delta
from reverse_etl_assets_tests.lakehouse_helpers import execute

CHROMIUM = Path("/usr/bin/chromium")
# Headless Chromium as root on a closed network: no sandbox, no GPU, no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_SECONDS = 60.0
UI_TIMEOUT_MS = 20_000
# How far (in graph units) an edge may end from the side of the node it connects.
EDGE_SLACK = 15.0

ORDERS = dg.AssetKey(["analytics", "gold", "orders"])
ORDERS_SYNCED = dg.AssetKey(["lakebase", "gold", "orders_synced"])
CUSTOMERS = dg.AssetKey(["analytics", "gold", "customers"])
CUSTOMERS_SYNCED = dg.AssetKey(["lakebase", "gold", "customers_synced"])
ORDER_ROWS = 1234

pytestmark = [
    pytest.mark.ui,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"needs Chromium at {CHROMIUM}: `apt-get install -y chromium` (.ci/run does)",
    ),
]


@dataclass(frozen=True)
class _Box:
    """Where a node of the asset graph is, in graph coordinates (the edges' coordinates too)."""

    x: float
    y: float
    width: float
    height: float


@pytest.fixture
def spec(tmp_path: Path, lake_root: Path) -> Path:
    """Two synced tables; `orders` is at Delta version 2 with 1,234 rows."""
    orders = lake_root / "analytics" / "gold" / "orders"
    for start, stop in ((0, 1000), (1000, 1200), (1200, ORDER_ROWS)):
        ids = pa.array(range(start, stop), pa.int64())
        write_delta(orders, pa.table({"order_id": ids, "amount": pc.multiply(ids, 2)}))
    customers = pa.table({"customer_id": pa.array([1, 2], pa.int64()), "name": ["a", "b"]})
    write_delta(lake_root / "analytics" / "gold" / "customers", customers)
    spec = tmp_path / "synced_tables.yaml"
    spec.write_text(
        """
lake_root: lake
synced_tables:
  - name: lakebase.gold.orders_synced
    source: analytics.gold.orders
    primary_key: [order_id]
  - name: lakebase.gold.customers_synced
    source: analytics.gold.customers
    primary_key: [customer_id]
"""
    )
    return spec


def test_ui_shows_sources_upstream_metadata_and_check_results(
    tmp_path: Path, spec: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dagster_home(tmp_path, spec, pg_dsn, monkeypatch)

    # Opening the instance first creates Dagster's tables, so the server never races to do it.
    with dg.DagsterInstance.get() as instance, _webserver(tmp_path) as server:
        defs = load_definitions()
        nodes = [*(defs.assets or ()), *(defs.asset_checks or ())]
        result = dg.materialize(
            [n for n in nodes if isinstance(n, dg.AssetsDefinition | dg.SourceAsset)],
            selection=[ORDERS_SYNCED],  # and its checks, as the UI's Materialize does
            resources=postgres_resources(pg_dsn),
            instance=instance,
        )
        assert result.success
        [event] = result.get_asset_materialization_events()
        materialization = event.step_materialization_data.materialization
        metadata = {k: v.value for k, v in materialization.metadata.items()}
        assert (metadata["dagster/row_count"], metadata["reverse_etl/delta_version"]) == (
            ORDER_ROWS,
            2,
        )
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {ROW_COUNT_CHECK: True, CONTENT_CHECK: True}

        server.wait_until_serving()
        _skip_welcome_dialog(server.url)
        with _browser(UI_TIMEOUT_MS) as page:
            _check_asset_graph(page, server.url)
            _check_asset_page(page, server.url, metadata)
            _check_asset_checks(page, server.url)


def _check_asset_graph(page: Page, url: str) -> None:
    """Every source and synced table is a node, and an edge runs from each source to its table."""
    page.goto(f"{url}/asset-groups")
    # Groups start collapsed; expand them once the graph has drawn them.
    for group in (SOURCE_GROUP, GROUP):
        expect(page.locator("svg foreignObject").get_by_text(group, exact=True)).to_be_visible()
    page.keyboard.press("Alt+e")  # the graph's "Expand all groups"
    for key in (ORDERS, ORDERS_SYNCED, CUSTOMERS, CUSTOMERS_SYNCED):
        expect(_node(page, key)).to_be_visible()
    # Node bodies fill in with live status after the layout.
    expect(_node(page, ORDERS_SYNCED)).to_contain_text("Materialized")
    expect(_node(page, ORDERS_SYNCED)).to_contain_text(re.compile(r"2\s*/\s*2\s*Passed"))
    expect(_node(page, CUSTOMERS_SYNCED)).to_contain_text("Never materialized")

    boxes = {key: _box(page, key) for key in (ORDERS, ORDERS_SYNCED, CUSTOMERS, CUSTOMERS_SYNCED)}
    edges = [_endpoints(d) for d in _edge_paths(page)]
    for source, synced in ((ORDERS, ORDERS_SYNCED), (CUSTOMERS, CUSTOMERS_SYNCED)):
        assert any(
            _leaves(start, boxes[source]) and _enters(end, boxes[synced]) for start, end in edges
        ), f"no edge {source.to_user_string()} -> {synced.to_user_string()} among {edges}"
    assert len(edges) == 2, edges


def _check_asset_page(page: Page, url: str, metadata: dict[str, Any]) -> None:
    """The synced table's page names its source upstream and shows the last sync's metadata."""
    page.goto(f"{url}/assets/{ORDERS_SYNCED.to_user_string()}")

    upstream = page.get_by_text("Upstream assets", exact=True).locator("xpath=..").locator("a")
    expect(upstream).to_have_attribute("href", f"/assets/{ORDERS.to_user_string()}")
    expect(upstream).to_contain_text(ORDERS.to_user_string().replace("/", " / "))

    row_count = page.get_by_text("Row count", exact=True).locator("xpath=following-sibling::*")
    expect(row_count).to_have_text(f"{ORDER_ROWS:,}")
    for key in ("reverse_etl/delta_version", "reverse_etl/mode", "reverse_etl/sync_path"):
        row = page.locator("tr").filter(has=page.get_by_text(key, exact=True))
        value = row.locator("td").last
        expect(value).not_to_be_empty()
        shown = value.inner_text().strip()
        expected = metadata[key]
        if isinstance(expected, int | float):
            assert float(shown.replace(",", "")) == pytest.approx(expected), (key, shown)
        else:
            assert shown == expected, (key, shown)


def _check_asset_checks(page: Page, url: str) -> None:
    """The synced table's checks show that they passed, and what they compared."""
    page.goto(f"{url}/assets/{ORDERS_SYNCED.to_user_string()}?view=checks")
    for name in (ROW_COUNT_CHECK, CONTENT_CHECK):
        listed = page.locator("span").filter(has=page.get_by_title(name, exact=True)).last
        expect(listed).to_contain_text("Succeeded")
    page.get_by_title(CONTENT_CHECK, exact=True).click()
    expect(page.get_by_text("Passed", exact=True)).to_be_visible()
    detail = f"Postgres equals Delta version 2 ({ORDER_ROWS:,} rows"
    expect(page.get_by_text(detail)).to_be_visible()


def _node(page: Page, key: dg.AssetKey) -> Locator:
    """The graph node of `key`: the SVG foreignObject that holds its label."""
    label = page.get_by_text(key.path[-1], exact=True)
    return page.locator("svg foreignObject").filter(has=label).last


def _box(page: Page, key: dg.AssetKey) -> _Box:
    return _box_of(_node(page, key))


def _edge_paths(page: Page) -> list[str]:
    """The `d` of every drawn edge (edges are the SVG paths that end in an arrow)."""
    return [p.get_attribute("d") or "" for p in page.locator("svg path[marker-end]").all()]


def _endpoints(d: str) -> tuple[tuple[float, float], tuple[float, float]]:
    numbers = [float(n) for n in d.replace("M", " ").replace("C", " ").replace(",", " ").split()]
    return (numbers[0], numbers[1]), (numbers[-2], numbers[-1])


def _leaves(point: tuple[float, float], box: _Box) -> bool:
    """Whether an edge starting at `point` leaves `box` from its right side."""
    x, y = point
    return abs(x - (box.x + box.width)) <= EDGE_SLACK and box.y <= y <= box.y + box.height


def _enters(point: tuple[float, float], box: _Box) -> bool:
    """Whether an edge ending at `point` (its arrow) enters `box` from its left side."""
    x, y = point
    return abs(x - box.x) <= EDGE_SLACK and box.y <= y <= box.y + box.height


def _dagster_storage_env(dsn: str) -> dict[str, str]:
    """The DAGSTER_PG_* variables dagster.yaml reads, for the test's own database."""
    params = conninfo_to_dict(dsn)
    return {
        "DAGSTER_PG_HOST": str(params.get("host") or "127.0.0.1"),
        "DAGSTER_PG_PORT": str(params.get("port") or "5432"),
        "DAGSTER_PG_USER": str(params.get("user") or "postgres"),
        "DAGSTER_PG_PASSWORD": str(params.get("password") or ""),
        "DAGSTER_PG_DB": str(params["dbname"]),
    }


@dataclass(frozen=True)
class _Server:
    """A running `dagster-webserver` and its URL."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def wait_until_serving(self) -> None:
        """Block until the server answers; fail if it exits or takes too long."""
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not self._answers():
            if self.process.poll() is not None:
                raise AssertionError(f"dagster-webserver exited ({self.process.returncode})")
            if time.monotonic() > deadline:
                raise AssertionError(f"dagster-webserver did not answer at {self.url} in time")
            time.sleep(0.25)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False  # not listening yet


@contextmanager
def _webserver(tmp_path: Path, *, dev: bool = False, cwd: Path | None = None) -> Iterator[_Server]:
    """Start `dagster-webserver` (or, with `dev`, `dagster dev`: webserver, daemon and code
    server) on the project's workspace.yaml and a free port, in `cwd` (default `tmp_path`);
    stop it after. It starts in the background: call `wait_until_serving` before using it.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = tmp_path / ("dagster-dev.log" if dev else "webserver.log")
    program = ["dagster", "dev"] if dev else ["dagster_webserver"]
    workspace = ["-w", str(PROJECT_ROOT / "workspace.yaml")]
    command = [sys.executable, "-m", *program, *workspace, "-h", "127.0.0.1", "-p", str(port)]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd or tmp_path,
            env=dict(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server is a child: stop the whole group
        )
    # On a failure, the server's log goes to the test's output.
    try:
        yield _Server(url=f"http://127.0.0.1:{port}", process=process, log=log_path)
    except BaseException:
        print(f"--- last lines of {log_path} ---\n{_tail(log_path, 80)}")
        raise
    finally:
        _stop(process)


@contextmanager
def _browser(timeout_ms: int) -> Iterator[Page]:
    """A page of headless Chromium, `timeout_ms` for each wait and each expectation."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(timeout_ms)
            expect.set_options(timeout=timeout_ms)
            yield page
        finally:
            browser.close()


def _dagster_home(tmp_path: Path, spec: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of a code location over `spec`: a DAGSTER_HOME with the project's
    dagster.yaml, its storage in the test's Postgres."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.delenv(ENV_LAKE_ROOT, raising=False)
    for name, value in {
        ENV_SPEC: str(spec),
        ENV_PG_DSN: pg_dsn,
        "DAGSTER_HOME": str(home),
        **_dagster_storage_env(pg_dsn),
    }.items():
        monkeypatch.setenv(name, value)


def _skip_welcome_dialog(url: str) -> None:
    """Mark the first-run community dialog seen, as its Skip button does, so it hides nothing."""
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": "mutation { setNuxSeen }"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response) == {"data": {"setNuxSeen": True}}


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


PG_ORDERS = dg.AssetKey(["postgres", "app", "orders"])
MIRROR = dg.AssetKey(["bronze", "app", "orders"])
HISTORY = dg.AssetKey(["bronze", "app", "lb_orders_history"])
SERVED = dg.AssetKey(["lakebase", "serving", "orders_synced"])
APP_ORDERS = 25


@pytest.fixture
def lakehouse_spec(tmp_path: Path, pg_dsn: str) -> Path:
    """The closed loop: `app.orders` streamed into bronze.app, served back from Postgres."""
    execute(
        pg_dsn,
        "CREATE SCHEMA app",
        "CREATE TABLE app.orders (id bigint PRIMARY KEY, amount numeric(10, 2))",
        f"INSERT INTO app.orders SELECT g, g * 1.5 FROM generate_series(1, {APP_ORDERS}) g",
    )
    spec = tmp_path / "synced_tables.yaml"
    spec.write_text(
        """
lake_root: lake
synced_tables:
  - name: lakebase.serving.orders_synced
    source: bronze.app.orders
    primary_key: [id]
    mode: triggered
lakehouse_syncs:
  - name: app
    tables: [app.orders]
    target: bronze.app
    mode: triggered
"""
    )
    return spec


def test_ui_shows_the_closed_loop_with_lakehouse_metadata_and_checks(
    tmp_path: Path, lakehouse_spec: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dagster_home(tmp_path, lakehouse_spec, pg_dsn, monkeypatch)

    with dg.DagsterInstance.get() as instance, _webserver(tmp_path) as server:
        defs = load_definitions()
        nodes = [*(defs.assets or ()), *(defs.asset_checks or ())]
        assets = [n for n in nodes if isinstance(n, dg.AssetsDefinition)]
        resources = {**postgres_resources(pg_dsn), "lakehouse": LakehouseSyncResource()}
        drained = dg.materialize(
            assets, selection=[MIRROR, HISTORY], resources=resources, instance=instance
        )
        assert drained.success
        [event] = [e for e in drained.get_asset_materialization_events() if e.asset_key == MIRROR]
        metadata = {
            k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()
        }
        assert metadata["dagster/row_count"] == APP_ORDERS
        checks = {
            (e.asset_key, e.check_name): e.passed for e in drained.get_asset_check_evaluations()
        }
        assert checks == {
            (MIRROR, LAKEHOUSE_ROW_COUNT_CHECK): True,
            (MIRROR, LAKEHOUSE_CONTENT_CHECK): True,
            (MIRROR, RETAINED_WAL_CHECK): True,
            (HISTORY, RETAINED_WAL_CHECK): True,
        }
        served = dg.materialize(assets, selection=[SERVED], resources=resources, instance=instance)
        assert served.success

        server.wait_until_serving()
        _skip_welcome_dialog(server.url)
        with _browser(UI_TIMEOUT_MS) as page:
            _check_closed_loop_graph(page, server.url)
            _check_mirror_page(page, server.url, metadata)
            _check_mirror_checks(page, server.url)


def _check_closed_loop_graph(page: Page, url: str) -> None:
    """Postgres table -> history and mirror -> the synced table fed by the mirror."""
    page.goto(f"{url}/asset-groups")
    for group in (POSTGRES_GROUP, LAKEHOUSE_GROUP, GROUP):
        expect(page.locator("svg foreignObject").get_by_text(group, exact=True)).to_be_visible()
    page.keyboard.press("Alt+e")  # the graph's "Expand all groups"
    # The Postgres table and its mirror share a label; the mirror is the one of kind delta.
    orders = page.locator("svg foreignObject").filter(has=page.get_by_text("orders", exact=True))
    nodes = {
        PG_ORDERS: orders.filter(has_not_text="delta").last,
        MIRROR: orders.filter(has_text="delta").last,
        HISTORY: _node(page, HISTORY),
        SERVED: _node(page, SERVED),
    }
    for node in nodes.values():
        expect(node).to_be_visible()
    expect(nodes[MIRROR]).to_contain_text("Materialized")
    expect(nodes[MIRROR]).to_contain_text(re.compile(r"3\s*/\s*3\s*Passed"))
    expect(nodes[HISTORY]).to_contain_text(re.compile(r"1\s*/\s*1\s*Passed"))
    expect(nodes[SERVED]).to_contain_text("Materialized")

    boxes = {key: _box_of(node) for key, node in nodes.items()}
    edges = [_endpoints(d) for d in _edge_paths(page)]
    for upstream, downstream in ((PG_ORDERS, HISTORY), (PG_ORDERS, MIRROR), (MIRROR, SERVED)):
        assert any(
            _leaves(start, boxes[upstream]) and _enters(end, boxes[downstream])
            for start, end in edges
        ), f"no edge {upstream.to_user_string()} -> {downstream.to_user_string()} among {edges}"
    assert len(edges) == 3, edges


def _check_mirror_page(page: Page, url: str, metadata: dict[str, Any]) -> None:
    """The mirror's page names its Postgres table upstream and shows the drain's metadata."""
    page.goto(f"{url}/assets/{MIRROR.to_user_string()}")

    upstream = page.get_by_text("Upstream assets", exact=True).locator("xpath=..").locator("a")
    expect(upstream).to_have_attribute("href", f"/assets/{PG_ORDERS.to_user_string()}")
    row_count = page.get_by_text("Row count", exact=True).locator("xpath=following-sibling::*")
    expect(row_count).to_have_text(f"{APP_ORDERS:,}")
    for key in ("reverse_etl/last_lsn", "reverse_etl/slot", "reverse_etl/sync_path"):
        row = page.locator("tr").filter(has=page.get_by_text(key, exact=True))
        expect(row.locator("td").last).to_have_text(str(metadata[key]))
    for key in ("reverse_etl/delta_version", "reverse_etl/retained_wal_bytes"):
        row = page.locator("tr").filter(has=page.get_by_text(key, exact=True))
        shown = row.locator("td").last.inner_text().strip()
        assert float(shown.replace(",", "")) == metadata[key], (key, shown)


def _check_mirror_checks(page: Page, url: str) -> None:
    """The mirror's checks passed: it equals Postgres, and the slot keeps little WAL."""
    page.goto(f"{url}/assets/{MIRROR.to_user_string()}?view=checks")
    for name in (LAKEHOUSE_ROW_COUNT_CHECK, LAKEHOUSE_CONTENT_CHECK, RETAINED_WAL_CHECK):
        listed = page.locator("span").filter(has=page.get_by_title(name, exact=True)).last
        expect(listed).to_contain_text("Succeeded")
    page.get_by_title(LAKEHOUSE_CONTENT_CHECK, exact=True).click()
    expect(page.get_by_text("Passed", exact=True)).to_be_visible()
    expect(page.get_by_text(f"app.orders: {APP_ORDERS:,} rows equal").first).to_be_visible()


def _box_of(node: Locator) -> _Box:
    return _Box(*(float(node.get_attribute(a) or "nan") for a in ("x", "y", "width", "height")))
