"""Lakehouse syncs (Postgres → Delta) against their ceilings, measured in the same run
(`make bench-lakehouse`). Prints ratios and peak RSS, never gates.

1. snapshot: the first `sync_lakehouse` of a 10-column table (history + mirror), each run in a fresh
   interpreter (its peak RSS is its own). Ceiling: psql `\\copy (SELECT …) TO '/dev/null'` of
   the same table plus `write_deltalake` of the same rows already in Arrow, once (one table) and
   twice (history and mirror: what the sync has to write).
2. stream: a writer commits 1,000-change transactions (50% inserts, 40% updates, 10% deletes) back
   to back while a `reverse-etl follow` subprocess lands them; changes/s from the writer's first
   commit to the last one visible in both Delta tables. Ceiling: `pg_recvlogical` (pgoutput, the
   same publication) reading the same WAL from a second slot, alone, to /dev/null.
3. latency: 100-change transactions at 5/s for a minute under a follower with the default
   1-second flush interval; per transaction, its commit time (`_pg_commit_time` in the history)
   to the moment a reader polling every 50 ms first sees it in history and in mirror.

Target: REVERSE_ETL_PG_DSN or the embedded cluster, database `reverse_etl_bench` only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from psycopg import sql

from benchmarks.snapshot import BENCH_DIR, ROOT, SCHEMA_ARROW, _peak_rss_mb, bench_dsn, checkpoint
from reverse_etl_assets import settings
from reverse_etl_assets.spec import LakehouseSync, parse_spec

RESULTS = BENCH_DIR / "results-lakehouse.json"
WORK = BENCH_DIR / "lakehouse"
SPEC = WORK / "lakehouse.yaml"
SCHEMA = "bench_lakehouse"  # not the other benchmarks' schemas, which they drop
SNAPSHOT_SIZES = (2_000_000, 8_000_000)
STREAM_ROWS = 1_000_000
STREAM_TXN = 1_000
STREAM_SECONDS = 45.0
LATENCY_ROWS = 100_000
LATENCY_TXN = 100
LATENCY_RATE = 5.0  # transactions per second
LATENCY_SECONDS = 60.0
POLL_SECONDS = 0.05
CEILING_SLOT = "bench_lakehouse_ceiling"
# One transaction's changes: inserts, updates, deletes (fractions of its size).
MIX = (0.5, 0.4, 0.1)

GOAL_SNAPSHOT_RATIO = 0.8
GOAL_RSS_MB = 300
FLAT_TOLERANCE = 1.10
GOAL_CHANGES_PER_SECOND = 50_000
GOAL_P50, GOAL_P99 = 1.0, 3.0

COLUMNS = ("id", "name", "email", "city", "ts", "amount", "score", "active", "day", "qty")
# The rows of benchmarks.snapshot._generated_batches, computed by Postgres (ids from $1 to $2).
GENERATE = """
INSERT INTO {t} (id, name, email, city, ts, amount, score, active, day, qty)
SELECT i, 'name_' || (i % 100000), 'user' || i || '@example.com', 'city_' || (i % 1000),
       timestamptz '2020-09-13 12:26:40+00' + i * interval '1 millisecond',
       ((i * 7919) % 10000000)::numeric / 100, (i * 0.618::float8) - floor(i * 0.618::float8),
       i % 3 = 0, date '1970-01-01' + (i % 20000)::int, (i % 1000)::int
FROM generate_series({first}::bigint, {last}::bigint) AS i
"""
CREATE = """
CREATE TABLE {t} (
    id bigint PRIMARY KEY, name text, email text, city text, ts timestamptz,
    amount numeric(10, 2), score float8, active boolean, day date, qty int
)
"""


def main() -> None:
    """`python -m benchmarks.lakehouse [--only snapshot|stream|latency] [--sizes 2000000,...]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["snapshot", "stream", "latency"], action="append")
    parser.add_argument(
        "--sizes",
        default=",".join(str(n) for n in SNAPSHOT_SIZES),
        help="snapshot table sizes, comma-separated (default %(default)s)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="snapshot timings per size (median)")
    parser.add_argument("--stream-seconds", type=float, default=STREAM_SECONDS)
    parser.add_argument("--latency-seconds", type=float, default=LATENCY_SECONDS)
    parser.add_argument("--profile", action="store_true", help="cProfile the followers")
    parser.add_argument("--snapshot-child", type=int, metavar="ROWS", help=argparse.SUPPRESS)
    parser.add_argument("--ceiling-child", type=int, metavar="ROWS", help=argparse.SUPPRESS)
    parser.add_argument("--follow-child", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.snapshot_child:
        snapshot_child(args.snapshot_child)
        return
    if args.ceiling_child:
        ceiling_child(args.ceiling_child)
        return
    if args.follow_child:
        follow_child(args.follow_child, profile=args.profile)
        return
    only = set(args.only or ["snapshot", "stream", "latency"])
    dsn = bench_dsn(settings.pg_dsn())
    os.environ[settings.ENV_PG_DSN] = dsn
    WORK.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    results: dict[str, Any] = (
        json.loads(RESULTS.read_text()) if RESULTS.exists() and args.only else {}
    )
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if "snapshot" in only:
        sizes = [int(n) for n in args.sizes.split(",")]
        results["snapshot"] = measure_snapshots(dsn, sizes, repeat=args.repeat)
    if "stream" in only:
        results["stream"] = measure_stream(dsn, seconds=args.stream_seconds, profile=args.profile)
    if "latency" in only:
        results["latency"] = measure_latency(
            dsn, seconds=args.latency_seconds, profile=args.profile
        )
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print_results(results)
    print(f"\nresults written to {RESULTS.relative_to(ROOT)}")


# --- data and spec ----------------------------------------------------------------------------


def ensure_table(dsn: str, table: str, rows: int, *, fresh: bool = False) -> None:
    """The benchmark table `table` with ids 0..rows-1, generated by Postgres unless already
    there; vacuumed so that hint bits are not set by whichever reader comes first."""
    t = sql.Identifier(SCHEMA, table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not fresh and _count(conn, table) == rows:
            return
        print(f"generating {rows:,} rows into {SCHEMA}.{table} ...", flush=True)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t))
        conn.execute(sql.SQL(CREATE).format(t=t))
        step = 1_000_000
        for first in range(0, rows, step):
            last = min(rows, first + step) - 1
            conn.execute(
                sql.SQL(GENERATE).format(t=t, first=sql.Literal(first), last=sql.Literal(last))
            )
        conn.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}").format(t))


def _count(conn: psycopg.Connection, table: str) -> int | None:
    if conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{table}",)).fetchone() == (None,):
        return None
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, table)))
    return int(row.fetchone()[0])  # type: ignore[index]


def lakehouse_sync(name: str) -> LakehouseSync:
    """The spec entry of benchmark sync `name` (written to SPEC for the CLI follower too)."""
    spec = parse_spec(yaml.safe_load(SPEC.read_text()), path=SPEC)
    found = spec.lakehouse_sync(name)
    assert found is not None, name
    return found


def write_spec(names: dict[str, str]) -> None:
    """One continuous lakehouse sync per {name: table}, each under its own target folder;
    defaults everywhere else (flush_interval_seconds 1)."""
    syncs = [
        {"name": name, "tables": [f"{SCHEMA}.{table}"], "target": str(WORK / name)}
        for name, table in names.items()
    ]
    SPEC.write_text(yaml.safe_dump({"lakehouse_syncs": syncs}))


def reset_sync(dsn: str, name: str) -> None:
    """Drop the sync's slot, publication, state and Delta tables, if any."""
    from reverse_etl_assets.pipelines.postgres_to_delta.delete import delete_lakehouse

    delete_lakehouse(lakehouse_sync(name), dsn, drop_tables=True)
    shutil.rmtree(WORK / name, ignore_errors=True)


def _snapshot_name(rows: int) -> str:
    return f"bench_snap_{rows}"


# --- 1. snapshot ------------------------------------------------------------------------------


def measure_snapshots(dsn: str, sizes: list[int], *, repeat: int) -> list[dict[str, Any]]:
    """Per size: ceiling (copy, one write, two writes) and sync, alternating `repeat` times."""
    write_spec({_snapshot_name(n): f"snap_{n}" for n in sizes})
    figures = []
    for rows in sizes:
        ensure_table(dsn, f"snap_{rows}", rows)
        copies, writes, syncs = [], [], []
        for attempt in range(1, repeat + 1):
            copies.append(time_copy(dsn, rows))
            writes.append(time_ceiling_write(rows))
            syncs.append(time_snapshot_sync(dsn, rows))
            print(
                f"  {rows:,} rows, run {attempt}: copy {copies[-1]:.2f} s, write_deltalake "
                f"{writes[-1]:.2f} s, sync {syncs[-1]['seconds']:.2f} s, peak RSS "
                f"{syncs[-1]['peak_rss_mb']:.0f} MB (after imports "
                f"{syncs[-1]['import_rss_mb']:.0f} MB)",
                flush=True,
            )
        copy, write = statistics.median(copies), statistics.median(writes)
        sync = statistics.median(s["seconds"] for s in syncs)
        figures.append(
            {
                "rows": rows,
                "copy_seconds": copy,
                "write_seconds": write,
                "ceiling_one_write_seconds": copy + write,
                "ceiling_two_writes_seconds": copy + 2 * write,
                "sync_seconds": sync,
                "ratio_one_write": (copy + write) / sync,
                "ratio_two_writes": (copy + 2 * write) / sync,
                "peak_rss_mb": max(s["peak_rss_mb"] for s in syncs),
                "import_rss_mb": max(s["import_rss_mb"] for s in syncs),
                "sync_runs": [s["seconds"] for s in syncs],
                "copy_runs": copies,
                "write_runs": writes,
            }
        )
    return figures


def time_copy(dsn: str, rows: int) -> float:
    """Seconds of psql `\\copy (SELECT …) TO '/dev/null'` (CSV, what the sync's COPY asks for)."""
    checkpoint(dsn)
    select = f"SELECT {', '.join(COLUMNS)} FROM {SCHEMA}.snap_{rows}"
    psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    command = [psql, dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    command += ["-c", f"\\copy ({select}) TO '/dev/null' WITH (FORMAT csv)"]
    started = time.monotonic()
    subprocess.run(command, check=True)
    return time.monotonic() - started


def time_ceiling_write(rows: int) -> float:
    """Seconds of one `write_deltalake` of the rows already in Arrow (fresh interpreter)."""
    return float(_child(["--ceiling-child", str(rows)])["seconds"])


def ceiling_child(rows: int) -> None:
    """Build the rows in Arrow (not timed), write them to a fresh Delta table (timed)."""
    from deltalake import write_deltalake

    from benchmarks.snapshot import _generated_batches

    data = pa.Table.from_batches(list(_generated_batches(rows)), schema=SCHEMA_ARROW)
    target = WORK / f"ceiling_{rows}"
    shutil.rmtree(target, ignore_errors=True)
    started = time.monotonic()
    write_deltalake(str(target), data, mode="overwrite")
    seconds = time.monotonic() - started
    shutil.rmtree(target, ignore_errors=True)
    print(json.dumps({"seconds": seconds}))


def time_snapshot_sync(dsn: str, rows: int) -> dict[str, Any]:
    """One first `sync_lakehouse` of the `rows` table in a fresh interpreter."""
    reset_sync(dsn, _snapshot_name(rows))
    checkpoint(dsn)
    try:
        return _child(["--snapshot-child", str(rows)])
    finally:
        reset_sync(dsn, _snapshot_name(rows))


def snapshot_child(rows: int) -> None:
    """The initial snapshot (history + mirror) in this fresh process; seconds and peak RSS."""
    from reverse_etl_assets.pipelines.postgres_to_delta.run import sync_lakehouse

    sync = lakehouse_sync(_snapshot_name(rows))
    import_rss = _peak_rss_mb()
    started = time.monotonic()
    result = sync_lakehouse(sync, settings.pg_dsn())
    seconds = time.monotonic() - started
    landed = sum(result.snapshot_rows.values())
    if result.path != "snapshot" or landed != rows:
        raise SystemExit(f"expected a snapshot of {rows:,} rows, got {result.describe()}")
    print(
        json.dumps({"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "import_rss_mb": import_rss})
    )


def _child(args: list[str]) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.lakehouse", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        raise SystemExit(f"{args} failed:\n{child.stderr}")
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


# --- followers and Delta visibility -----------------------------------------------------------


class Follower:
    """A `reverse-etl follow NAME` subprocess (through follow_child, so it can be profiled)."""

    def __init__(self, dsn: str, name: str, *, profile: bool) -> None:
        self.name = name
        self.log_path = WORK / f"{name}.log"
        env = {**os.environ, settings.ENV_SPEC: str(SPEC), settings.ENV_PG_DSN: dsn}
        command = [sys.executable, "-m", "benchmarks.lakehouse", "--follow-child", name]
        if profile:
            command.append("--profile")
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.peak_rss_mb: float | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM (the follower lands what it holds and exits); its own peak RSS from wait4."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            _, status, usage = os.wait4(self.proc.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            self.peak_rss_mb = usage.ru_maxrss / 1024  # KiB on Linux
        self._log.close()

    def flush_seconds(self) -> list[float]:
        """Seconds of each streamed flush, from the follower's log lines."""
        seconds = []
        for line in self.log_path.read_text().splitlines():
            if ": stream up to LSN" in line and line.endswith("s"):
                seconds.append(float(line.rsplit(" in ", 1)[1].removesuffix("s")))
        return seconds


def follow_child(name: str, *, profile: bool) -> None:
    """`reverse-etl follow NAME`, optionally under cProfile (stats written next to the log)."""
    from reverse_etl_assets import cli

    sys.argv = ["reverse-etl", "follow", name]
    if not profile:
        sys.exit(cli.main())
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    try:
        profiler.runcall(cli.main)
    finally:
        out = WORK / f"{name}.prof"
        profiler.dump_stats(out)
        with (WORK / f"{name}.prof.txt").open("w") as text:
            pstats.Stats(str(out), stream=text).sort_stats("cumulative").print_stats(45)


class Visibility:
    """Polls the Delta tables' txn version (the commit LSN of the last source transaction each
    holds) every POLL_SECONDS; remembers when each new version was first seen (wall clock)."""

    def __init__(self, sync: LakehouseSync, table: str) -> None:
        from reverse_etl_assets.pipelines.postgres_to_delta.stream import app_id

        self.app_id = app_id(sync)
        self.uris = {"history": sync.history_uri(table), "mirror": sync.mirror_uri(table)}
        self.seen: dict[str, list[tuple[int, float]]] = {kind: [] for kind in self.uris}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from deltalake import DeltaTable

        tables = {kind: DeltaTable(uri) for kind, uri in self.uris.items()}
        while not self._stop.is_set():
            for kind, table in tables.items():
                table.update_incremental()
                now = time.time()
                version = table.transaction_version(self.app_id)
                seen = self.seen[kind]
                if version is not None and (not seen or version > seen[-1][0]):
                    seen.append((version, now))
            time.sleep(POLL_SECONDS)

    def visible_at(self, kind: str, lsn: int) -> float | None:
        """When the table `kind` first held the source transaction committed at `lsn`."""
        return next((at for v, at in self.seen[kind] if v >= lsn), None)

    def wait_for(self, lsn: int, *, timeout: float, alive: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        while any(self.visible_at(kind, lsn) is None for kind in self.uris):
            if time.monotonic() > deadline or not alive():
                raise SystemExit(f"LSN {lsn} not visible in both Delta tables after {timeout}s")
            time.sleep(0.1)


@contextmanager
def following(
    dsn: str, name: str, table: str, *, profile: bool
) -> Iterator[tuple[Follower, Visibility]]:
    """A follower past its initial snapshot, and a Visibility poller on its Delta tables."""
    from reverse_etl_assets.delta import writer
    from reverse_etl_assets.pipelines.postgres_to_delta.stream import app_id

    reset_sync(dsn, name)
    sync = lakehouse_sync(name)
    follower = Follower(dsn, name, profile=profile)
    try:
        started = time.monotonic()
        uris = (sync.history_uri(table), sync.mirror_uri(table))
        while any(writer.transaction_version(u, app_id(sync)) is None for u in uris):
            if not follower.alive() or time.monotonic() - started > 600:
                raise SystemExit(f"the follower did not take its snapshot; see {follower.log_path}")
            time.sleep(0.2)
        print(f"  follower's initial snapshot landed in {time.monotonic() - started:.1f} s")
        time.sleep(1.0)  # past the catch-up drain, streaming
        visibility = Visibility(sync, table)
        visibility.start()
        try:
            yield follower, visibility
        finally:
            visibility.stop()
    finally:
        follower.stop()


# --- the writer -------------------------------------------------------------------------------


class Writer:
    """Commits transactions of `size` changes (MIX: inserts of new ids, updates of existing ids,
    deletes of the oldest ids), each one statement batch, server-side generated rows."""

    def __init__(self, dsn: str, table: str, *, rows: int, size: int) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.t = sql.Identifier(SCHEMA, table).as_string(self.conn)
        self.size = size
        self.inserts = int(size * MIX[0])
        self.updates = int(size * MIX[1])
        self.deletes = size - self.inserts - self.updates
        self.next_id = rows
        self.oldest = 0
        self.update_at = 0
        self.transactions = 0
        self.changes = 0
        self.last_commit_lsn = 0

    def commit_one(self) -> None:
        """One transaction; remembers a lower bound of its commit LSN."""
        ins_first, ins_last = self.next_id, self.next_id + self.inserts - 1
        self.next_id += self.inserts
        live = self.next_id - self.oldest - self.deletes - self.updates
        upd_first = self.oldest + self.deletes + (self.update_at % max(live, 1))
        self.update_at += self.updates * 7 + 1
        del_first = self.oldest
        self.oldest += self.deletes
        statement = (
            "BEGIN;"
            + GENERATE.format(t=self.t, first=ins_first, last=ins_last)
            + f"; UPDATE {self.t} SET score = random(), qty = qty + 1, ts = clock_timestamp() "
            f"WHERE id BETWEEN {upd_first} AND {upd_first + self.updates - 1}"
            f"; DELETE FROM {self.t} "
            f"WHERE id BETWEEN {del_first} AND {del_first + self.deletes - 1}"
            "; SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn; COMMIT"
        )
        cur = self.conn.execute(statement.encode())
        # the result of the SELECT (the last statement with rows)
        while cur.nextset():
            if cur.pgresult is not None and cur.description is not None:
                row = cur.fetchone()
                if row is not None:
                    self.last_commit_lsn = int(row[0])
        self.transactions += 1
        self.changes += self.size

    def close(self) -> None:
        self.conn.close()


# --- 2. stream --------------------------------------------------------------------------------

STREAM_NAME = "bench_stream"
LATENCY_NAME = "bench_latency"


def measure_stream(dsn: str, *, seconds: float, profile: bool) -> dict[str, Any]:
    """A writer back to back for `seconds` under a follower; then pg_recvlogical on the same WAL."""
    table = "stream_1m"
    write_spec({STREAM_NAME: table, LATENCY_NAME: "latency"})
    ensure_table(dsn, table, STREAM_ROWS, fresh=True)
    print(
        f"stream: {STREAM_TXN:,}-change transactions back to back for {seconds:g} s on a "
        f"{STREAM_ROWS:,}-row table",
        flush=True,
    )
    with following(dsn, STREAM_NAME, table, profile=profile) as (follower, visibility):
        sync = lakehouse_sync(STREAM_NAME)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = %s", (CEILING_SLOT,))  # fmt: skip
            conn.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (CEILING_SLOT,)
            )
        writer = Writer(dsn, table, rows=STREAM_ROWS, size=STREAM_TXN)
        started = time.time()
        while time.time() - started < seconds:
            writer.commit_one()
        written = time.time() - started
        writer.close()
        visibility.wait_for(writer.last_commit_lsn, timeout=900, alive=follower.alive)
        landed = {
            k: visibility.visible_at(k, writer.last_commit_lsn) for k in ("history", "mirror")
        }
    flushes = follower.flush_seconds()
    with psycopg.connect(dsn, autocommit=True) as conn:
        endpos = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
    ceiling_seconds = time_recvlogical(dsn, sync.publication, str(endpos))
    check = check_stream(dsn, sync, table, writer)
    changes = writer.changes
    elapsed = {k: at - started for k, at in landed.items() if at is not None}
    result = {
        "transactions": writer.transactions,
        "changes": changes,
        "writer_seconds": written,
        "writer_changes_per_second": changes / written,
        "history_seconds": elapsed["history"],
        "mirror_seconds": elapsed["mirror"],
        "history_changes_per_second": changes / elapsed["history"],
        "mirror_changes_per_second": changes / elapsed["mirror"],
        "lag_after_writer_seconds": max(elapsed.values()) - written,
        "ceiling_seconds": ceiling_seconds,
        "ceiling_changes_per_second": changes / ceiling_seconds,
        "ratio": (changes / max(elapsed.values())) / (changes / ceiling_seconds),
        "follower_peak_rss_mb": follower.peak_rss_mb,
        "flushes": len(flushes),
        "flush_seconds_median": statistics.median(flushes) if flushes else None,
        "flush_seconds_max": max(flushes) if flushes else None,
        **check,
    }
    print(
        f"  {changes:,} changes in {writer.transactions:,} transactions, writer "
        f"{result['writer_changes_per_second']:,.0f} changes/s; landed: history "
        f"{result['history_changes_per_second']:,.0f}/s, mirror "
        f"{result['mirror_changes_per_second']:,.0f}/s; pg_recvlogical "
        f"{result['ceiling_changes_per_second']:,.0f}/s; ratio {result['ratio']:.2f}",
        flush=True,
    )
    return result


def time_recvlogical(dsn: str, publication: str, endpos: str) -> float:
    """Seconds for pg_recvlogical to receive the ceiling slot's WAL up to `endpos`, alone."""
    binary = shutil.which("pg_recvlogical") or "/usr/lib/postgresql/15/bin/pg_recvlogical"
    command = [binary, "-d", dsn, f"--slot={CEILING_SLOT}", "--start", f"--endpos={endpos}"]
    command += ["-o", "proto_version=1", "-o", f"publication_names={publication}"]
    command += ["--no-loop", "-f", "/dev/null"]
    try:
        started = time.monotonic()
        subprocess.run(command, check=True)
        return time.monotonic() - started
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (CEILING_SLOT,))


def check_stream(dsn: str, sync: LakehouseSync, table: str, writer: Writer) -> dict[str, Any]:
    """History holds every change once; the mirror holds Postgres' rows."""
    from deltalake import DeltaTable

    history = DeltaTable(sync.history_uri(table)).to_pyarrow_dataset()
    streamed = history.count_rows(filter=pc.field("_pg_xid").is_valid())
    mirror = DeltaTable(sync.mirror_uri(table)).to_pyarrow_dataset().count_rows()
    with psycopg.connect(dsn) as conn:
        postgres = _count(conn, table)
    ok = streamed == writer.changes and mirror == postgres
    if not ok:
        print(
            f"  CHECK FAILED: history has {streamed:,} streamed changes (expected "
            f"{writer.changes:,}); mirror {mirror:,} rows, Postgres {postgres:,}"
        )
    return {"history_streamed_rows": streamed, "mirror_rows": mirror, "postgres_rows": postgres,
            "landed_ok": ok}  # fmt: skip


# --- 3. latency -------------------------------------------------------------------------------


def measure_latency(dsn: str, *, seconds: float, profile: bool) -> dict[str, Any]:
    """Transactions at LATENCY_RATE; each one's commit-to-visible time in history and mirror."""
    from deltalake import DeltaTable

    table = "latency"
    write_spec({STREAM_NAME: "stream_1m", LATENCY_NAME: table})
    ensure_table(dsn, table, LATENCY_ROWS, fresh=True)
    count = int(seconds * LATENCY_RATE)
    print(
        f"latency: {count} transactions of {LATENCY_TXN} changes at {LATENCY_RATE:g}/s, follower "
        "flushing every 1 s (the default)",
        flush=True,
    )
    sync = lakehouse_sync(LATENCY_NAME)
    with following(dsn, LATENCY_NAME, table, profile=profile) as (follower, visibility):
        writer = Writer(dsn, table, rows=LATENCY_ROWS, size=LATENCY_TXN)
        started = time.monotonic()
        for n in range(count):
            delay = started + n / LATENCY_RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            writer.commit_one()
        writer.close()
        visibility.wait_for(writer.last_commit_lsn, timeout=120, alive=follower.alive)
    commits = (
        DeltaTable(sync.history_uri(table))
        .to_pyarrow_dataset()
        .to_table(columns=["_pg_lsn", "_pg_commit_time"], filter=pc.field("_pg_xid").is_valid())
        .group_by("_pg_lsn")
        .aggregate([("_pg_commit_time", "min")])
    )
    result: dict[str, Any] = {"transactions": commits.num_rows, "expected": count}
    for kind in ("history", "mirror"):
        latencies = []
        for lsn, committed in zip(
            commits["_pg_lsn"].to_pylist(), commits["_pg_commit_time_min"].to_pylist(), strict=True
        ):
            at = visibility.visible_at(kind, lsn)
            if at is not None:
                latencies.append(at - committed.timestamp())
        latencies.sort()
        result[kind] = {
            "p50_seconds": _percentile(latencies, 50),
            "p99_seconds": _percentile(latencies, 99),
            "max_seconds": latencies[-1] if latencies else None,
            "seen": len(latencies),
        }
        print(
            f"  {kind}: p50 {result[kind]['p50_seconds']:.3f} s, p99 "
            f"{result[kind]['p99_seconds']:.3f} s, max {result[kind]['max_seconds']:.3f} s",
            flush=True,
        )
    flushes = follower.flush_seconds()
    result["flushes"] = len(flushes)
    result["flush_seconds_median"] = statistics.median(flushes) if flushes else None
    result["follower_peak_rss_mb"] = follower.peak_rss_mb
    return result


def _percentile(values: list[float], percent: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


# --- report -----------------------------------------------------------------------------------


def print_results(results: dict[str, Any]) -> None:
    """The figures as tables, goals last."""
    snapshot = results.get("snapshot")
    if snapshot:
        print(
            f"\n{'snapshot':<10}{'rows':>11}{'copy s':>8}{'write s':>9}{'sync s':>8}"
            f"{'rows/s':>10}{'ratio 1w':>10}{'ratio 2w':>10}{'peak RSS MB':>13}"
        )
        for f in snapshot:
            print(
                f"{'':<10}{f['rows']:>11,}{f['copy_seconds']:>8.2f}{f['write_seconds']:>9.2f}"
                f"{f['sync_seconds']:>8.2f}{f['rows'] / f['sync_seconds']:>10,.0f}"
                f"{f['ratio_one_write']:>10.2f}{f['ratio_two_writes']:>10.2f}"
                f"{f['peak_rss_mb']:>13.0f}"
            )
        print(
            "ratio 1w: ceiling (psql \\copy TO /dev/null + one write_deltalake of the rows in "
            "Arrow) / sync; ratio 2w: the same with two writes (history and mirror, what the sync "
            "writes: the fair one)"
        )
        small, large = snapshot[0], snapshot[-1]
        print(
            f"goals: ratio >= {GOAL_SNAPSHOT_RATIO}: "
            f"{_met(all(f['ratio_two_writes'] >= GOAL_SNAPSHOT_RATIO for f in snapshot))} (2w), "
            f"{_met(all(f['ratio_one_write'] >= GOAL_SNAPSHOT_RATIO for f in snapshot))} (1w); "
            f"peak RSS <= {GOAL_RSS_MB} MB: "
            f"{_met(all(f['peak_rss_mb'] <= GOAL_RSS_MB for f in snapshot))}; flat "
            f"{small['rows']:,} -> {large['rows']:,}: "
            f"{_met(large['peak_rss_mb'] <= small['peak_rss_mb'] * FLAT_TOLERANCE)}"
        )
    stream = results.get("stream")
    if stream:
        print(
            f"\nstream: {stream['changes']:,} changes; writer "
            f"{stream['writer_changes_per_second']:,.0f}/s; landed history "
            f"{stream['history_changes_per_second']:,.0f}/s, mirror "
            f"{stream['mirror_changes_per_second']:,.0f}/s (lag after the writer stopped "
            f"{stream['lag_after_writer_seconds']:.1f} s); pg_recvlogical "
            f"{stream['ceiling_changes_per_second']:,.0f}/s; ratio {stream['ratio']:.2f}; "
            f"follower peak RSS {stream['follower_peak_rss_mb']:.0f} MB; {stream['flushes']} "
            f"flushes, median {stream['flush_seconds_median']:.2f} s"
        )
        rate = min(stream["history_changes_per_second"], stream["mirror_changes_per_second"])
        met = _met(rate >= GOAL_CHANGES_PER_SECOND)
        print(f"goal: >= {GOAL_CHANGES_PER_SECOND:,} changes/s: {met}")
    latency = results.get("latency")
    if latency:
        print(f"\nlatency: {latency['transactions']} transactions (of {latency['expected']})")
        for kind in ("history", "mirror"):
            k = latency[kind]
            met = k["p50_seconds"] <= GOAL_P50 and k["p99_seconds"] <= GOAL_P99
            print(
                f"  {kind:<8} p50 {k['p50_seconds']:.3f} s  p99 {k['p99_seconds']:.3f} s  max "
                f"{k['max_seconds']:.3f} s  (goal p50 <= {GOAL_P50:g} s, p99 <= {GOAL_P99:g} s: "
                f"{_met(met)})"
            )


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    main()
