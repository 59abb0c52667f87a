"""Continuous mode: commit-to-visible latency and sustained throughput (`make bench-latency`).

A `reverse-etl follow` subprocess polls every second while this process commits to Delta and
watches the checkpoint in Postgres. Prints percentiles and rows/s, never gates on them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import yaml
from deltalake import DeltaTable, write_deltalake
from psycopg import sql

from reverse_etl_assets import settings

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "data" / "bench" / "latency"
RESULTS = ROOT / "data" / "bench" / "results-latency.json"
DATABASE = "reverse_etl_bench_latency"
WATCH_EVERY_SECONDS = 0.005

LATENCY_TABLE = "bench.gold.latency_synced"
LATENCY_BASE_ROWS = 100_000
LATENCY_VERSION_ROWS = 100
LATENCY_RATE = 5.0  # versions per second
LATENCY_SECONDS = 60.0
GOAL_P50, GOAL_P99 = 1.0, 3.0

THROUGHPUT_KINDS = ("updates", "inserts")
THROUGHPUT_BUCKETS = 100
THROUGHPUT_VERSION_ROWS = 10_000
THROUGHPUT_VERSIONS = 40
GOAL_ROWS_PER_SECOND = 50_000


def main() -> None:
    """Run both measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=LATENCY_SECONDS, help="writer duration")
    parser.add_argument("--versions", type=int, default=THROUGHPUT_VERSIONS)
    args = parser.parse_args()
    dsn = bench_dsn(settings.pg_dsn())  # REVERSE_ETL_PG_DSN, else the embedded cluster
    shutil.rmtree(BENCH_DIR, ignore_errors=True)
    BENCH_DIR.mkdir(parents=True)
    spec = write_spec()
    results = {"latency": measure_latency(dsn, spec, seconds=args.seconds)}
    for kind in THROUGHPUT_KINDS:
        results[kind] = measure_throughput(dsn, spec, kind=kind, versions=args.versions)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults saved to {RESULTS.relative_to(ROOT)}")


def bench_dsn(dsn: str) -> str:
    """A fresh dedicated database for this benchmark."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        name = sql.Identifier(DATABASE)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    return psycopg.conninfo.make_conninfo(dsn, dbname=DATABASE)


def write_spec() -> Path:
    """Both benchmark tables, continuous, polled every second."""
    common = {"primary_key": ["id"], "mode": "continuous", "poll_interval_seconds": 1}
    tables = [
        {"name": LATENCY_TABLE, "source": "src.gold.latency", **common},
    ]
    # The incremental path is what is measured: never swap a snapshot in instead (with the
    # default threshold, a pile of more than 10% of the rows would be).
    tables += [
        {
            "name": f"bench.gold.{kind}_synced",
            "source": f"src.gold.{kind}",
            "full_refresh_threshold": 1.0,
            **common,
        }
        for kind in THROUGHPUT_KINDS
    ]
    spec = BENCH_DIR / "synced_tables.yaml"
    spec.write_text(yaml.safe_dump({"lake_root": str(BENCH_DIR / "lake"), "synced_tables": tables}))
    return spec


def measure_latency(dsn: str, spec: Path, *, seconds: float) -> dict[str, Any]:
    """A writer commits small versions at a steady rate; each one's commit-to-visible time."""
    source = BENCH_DIR / "lake/src/gold/latency"
    write_deltalake(
        str(source),
        rows(0, LATENCY_BASE_ROWS, tag="base"),
        configuration={"delta.enableChangeDataFeed": "true"},
    )
    count = int(seconds * LATENCY_RATE)
    print(
        f"latency: {count} versions of {LATENCY_VERSION_ROWS} rows at {LATENCY_RATE:g}/s, "
        "follower polling every 1 s"
    )
    committed: dict[int, float] = {}
    with follower(spec, dsn, LATENCY_TABLE) as watch:
        started = time.monotonic()
        for version in range(1, count + 1):
            _sleep_until(started + version / LATENCY_RATE)
            first = LATENCY_BASE_ROWS + (version - 1) * LATENCY_VERSION_ROWS
            write_deltalake(
                str(source), rows(first, LATENCY_VERSION_ROWS, tag=f"v{version}"), mode="append"
            )
            committed[version] = time.monotonic()
        watch.wait_for(count, timeout=60)
    latencies = sorted(watch.visible_at(v) - committed[v] for v in committed if watch.seen(v))
    missed = [v for v in committed if not watch.seen(v)]
    expected = LATENCY_BASE_ROWS + count * LATENCY_VERSION_ROWS
    landed = _landed(dsn, LATENCY_TABLE, expected)
    result = {
        "versions": count,
        "batches": watch.batches(),
        "p50_seconds": round(_percentile(latencies, 50), 3),
        "p99_seconds": round(_percentile(latencies, 99), 3),
        "max_seconds": round(latencies[-1], 3) if latencies else None,
        "missed_versions": missed,
        **landed,
    }
    met = result["p50_seconds"] <= GOAL_P50 and result["p99_seconds"] <= GOAL_P99
    print(
        f"  p50 {result['p50_seconds']:.3f}s  p99 {result['p99_seconds']:.3f}s  "
        f"max {result['max_seconds']:.3f}s  ({'goal met' if met else 'goal missed'}: "
        f"p50 <= {GOAL_P50:g}s, p99 <= {GOAL_P99:g}s)"
    )
    print(
        f"  {count} versions landed in {result['batches']} transactions; missed: "
        f"{len(missed)}; Postgres rows {landed['postgres_rows']:,} (expected {expected:,}), "
        f"content {'equal' if landed['content_equal'] else 'DIFFERENT'}"
    )
    return result


def measure_throughput(dsn: str, spec: Path, *, kind: str, versions: int) -> dict[str, Any]:
    """A writer commits 10,000-row versions back to back: each rewrites one bucket of the table
    (every row updated) or appends new keys (inserts)."""
    name = f"bench.gold.{kind}_synced"
    source = BENCH_DIR / "lake/src/gold" / kind
    base = rows(0, THROUGHPUT_BUCKETS * THROUGHPUT_VERSION_ROWS, tag="base")
    write_deltalake(
        str(source),
        base,
        partition_by=["bucket"],
        configuration={"delta.enableChangeDataFeed": "true"},
    )
    print(
        f"\n{kind}: {versions} versions of {THROUGHPUT_VERSION_ROWS:,} changed rows, back to "
        f"back, on a {base.num_rows:,}-row table"
    )
    with follower(spec, dsn, name) as watch:
        started = time.monotonic()
        for version in range(1, versions + 1):
            if kind == "updates":
                bucket = (version - 1) % THROUGHPUT_BUCKETS
                first = bucket * THROUGHPUT_VERSION_ROWS
                changed = rows(first, THROUGHPUT_VERSION_ROWS, tag=f"v{version}")
                write_deltalake(
                    str(source), changed, mode="overwrite", predicate=f"bucket = {bucket}"
                )
            else:
                first = base.num_rows + (version - 1) * THROUGHPUT_VERSION_ROWS
                changed = rows(first, THROUGHPUT_VERSION_ROWS, tag=f"v{version}")
                write_deltalake(str(source), changed, mode="append", partition_by=["bucket"])
        written = time.monotonic() - started
        watch.wait_for(versions, timeout=300)
        elapsed = watch.visible_at(versions) - started
    changed_rows = versions * THROUGHPUT_VERSION_ROWS
    expected = base.num_rows + (changed_rows if kind == "inserts" else 0)
    landed = _landed(dsn, name, expected)
    result = {
        "versions": versions,
        "changed_rows": changed_rows,
        "writer_seconds": round(written, 2),
        "seconds": round(elapsed, 2),
        "rows_per_second": round(changed_rows / elapsed),
        "batches": watch.batches(),
        **landed,
    }
    goal = "goal met" if result["rows_per_second"] >= GOAL_ROWS_PER_SECOND else "goal missed"
    print(
        f"  {changed_rows:,} changed rows visible {elapsed:.2f}s after the first commit started "
        f"(the writer took {written:.2f}s): {result['rows_per_second']:,} rows/s "
        f"({goal}: >= {GOAL_ROWS_PER_SECOND:,})"
    )
    print(
        f"  {versions} versions in {result['batches']} transactions; Postgres rows "
        f"{landed['postgres_rows']:,} (expected {expected:,}), content "
        f"{'equal' if landed['content_equal'] else 'DIFFERENT'}"
    )
    return result


def rows(first: int, count: int, *, tag: str) -> pa.Table:
    """`count` rows with ids from `first`; `tag` marks which version wrote them."""
    ids = pa.array(range(first, first + count), pa.int64())
    return pa.table(
        {
            "id": ids,
            "bucket": pa.array([i // THROUGHPUT_VERSION_ROWS for i in range(first, first + count)]),
            "name": pa.array([f"{tag}-{i}" for i in range(first, first + count)]),
            "score": pa.array([float(i) * 0.5 for i in range(first, first + count)]),
            "updated_at": pa.array([time.time_ns() // 1000] * count, pa.timestamp("us", tz="UTC")),
        }
    )


class Watch:
    """Polls the checkpoint in Postgres and remembers when each version first became visible."""

    def __init__(self, dsn: str, name: str) -> None:
        self.dsn = dsn
        self.name = name
        self.changes: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            last = None
            while not self._stop.is_set():
                row = conn.execute(
                    "SELECT last_synced_version FROM reverse_etl.synced_tables WHERE name = %s",
                    (self.name,),
                ).fetchone()
                now = time.monotonic()
                if row is not None and row[0] is not None and row[0] != last:
                    last = row[0]
                    self.changes.append((int(row[0]), now))
                time.sleep(WATCH_EVERY_SECONDS)

    def current(self) -> int | None:
        return self.changes[-1][0] if self.changes else None

    def wait_for(self, version: int, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.seen(version):
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: version {version} not visible after {timeout}s")
            time.sleep(0.05)

    def seen(self, version: int) -> bool:
        return any(v >= version for v, _ in self.changes)

    def visible_at(self, version: int) -> float:
        return next(at for v, at in self.changes if v >= version)

    def batches(self) -> int:
        return len(self.changes) - 1  # the first change is the initial snapshot


@contextmanager
def follower(spec: Path, dsn: str, name: str) -> Iterator[Watch]:
    """A `reverse-etl follow` subprocess, its initial snapshot done, and a Watch on it."""
    env = {**os.environ, settings.ENV_SPEC: str(spec), settings.ENV_PG_DSN: dsn}
    log = (BENCH_DIR / f"{name}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "reverse_etl_assets.cli", "follow", name],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    watch = Watch(dsn, name)
    try:
        deadline = time.monotonic() + 120
        while not _checkpoint_exists(dsn, name):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the follower did not start; see {log.name}")
            time.sleep(0.1)
        watch.start()
        watch.wait_for(0, timeout=10)
        yield watch
    finally:
        watch.stop()
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _checkpoint_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass('reverse_etl.synced_tables')").fetchone()
        if found is None or found[0] is None:
            return False
        row = conn.execute(
            "SELECT last_synced_version FROM reverse_etl.synced_tables WHERE name = %s", (name,)
        ).fetchone()
        return row is not None and row[0] is not None


def _landed(dsn: str, name: str, expected_rows: int) -> dict[str, Any]:
    """Row count and an order-independent digest of Postgres against the Delta source."""
    _, schema, table = name.split(".")
    source = BENCH_DIR / "lake/src/gold" / table.removesuffix("_synced")
    delta = DeltaTable(str(source)).to_pyarrow_table(columns=["id", "name"])
    delta_digest = sorted(zip(delta["id"].to_pylist(), delta["name"].to_pylist(), strict=True))
    with psycopg.connect(dsn) as conn:
        pg = conn.execute(
            sql.SQL("SELECT id, name FROM {} ORDER BY id, name").format(
                sql.Identifier(schema, table)
            )
        ).fetchall()
    return {
        "postgres_rows": len(pg),
        "expected_rows": expected_rows,
        "content_equal": [tuple(r) for r in pg] == delta_digest,
    }


def _percentile(values: list[float], percent: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(percent) - 1]


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


if __name__ == "__main__":
    main()
