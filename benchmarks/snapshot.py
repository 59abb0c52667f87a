"""Snapshot sync speed and memory against two ceilings, and verify's cost against the sync, all
measured in the same run (`make bench`).

Ceilings: psql's \\copy of a pre-encoded binary COPY file into an index-free table, then the
primary key built; once over one psql connection, once over as many parallel psql connections as
the sync uses, each loading its own part of the rows into the same table. Verify proves the
synced table equals its source, right after each sync. Each sync and each verify runs in a fresh
interpreter so its peak RSS is its own. Prints, never gates.
Target: REVERSE_ETL_PG_DSN or the embedded cluster, database `reverse_etl_bench` only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from benchmarks import cpu
from reverse_etl_assets import settings
from reverse_etl_assets.delta.reader import open_source, read_batches
from reverse_etl_assets.postgres import binary_copy, ddl
from reverse_etl_assets.postgres.table_load import connections_for
from reverse_etl_assets.schema.delta_to_postgres import PgColumn, pg_columns, to_wire
from reverse_etl_assets.spec import SyncedTable, parse_spec

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "data" / "bench"
RESULTS = BENCH_DIR / "results-snapshot.json"
DATABASE = "reverse_etl_bench"
SCHEMA = "bench"
CEILING_TABLE = "ceiling"
SIZES = (2_000_000, 8_000_000)
GENERATE_CHUNK = 1_000_000
GOAL_RATIO = 0.8
GOAL_PARALLEL_RATIO = 0.9
GOAL_VERIFY_RATIO = 0.2
GOAL_RSS_MB = 300
FLAT_TOLERANCE = 1.10  # "flat": the largest table peaks within 10% of the smallest

SCHEMA_ARROW = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        ("name", pa.string()),
        ("email", pa.string()),
        ("city", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("amount", pa.decimal128(10, 2)),
        ("score", pa.float64()),
        ("active", pa.bool_()),
        ("day", pa.date32()),
        ("qty", pa.int32()),
    ]
)


def main() -> None:
    """Run the benchmark, or (with --sync-child) one sync in this process."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="timings per measurement (median)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="table sizes in rows"
    )
    parser.add_argument("--sync-child", type=int, metavar="ROWS", help=argparse.SUPPRESS)
    parser.add_argument("--verify-child", type=int, metavar="ROWS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sync_child:
        sync_once(args.sync_child)
        return
    if args.verify_child:
        verify_once(args.verify_child)
        return
    run(repeat=args.repeat, sizes=tuple(args.sizes))


def run(*, repeat: int, sizes: tuple[int, ...] = SIZES) -> None:
    """Generate the tables if missing, measure ceiling and sync at each size, print and save.

    At each size the runs alternate (ceiling, parallel ceiling, sync, verify, ceiling, ...) so
    load drifting on a shared machine hits all alike; each figure is the median of its runs.
    """
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    for rows in sizes:
        ensure_table(rows)
    dsn = bench_dsn(settings.pg_dsn())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
        conn.execute(ddl.create_schema(SCHEMA))
    try:
        measured = [measure_size(dsn, rows, repeat=repeat) for rows in sizes]
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))
    results = summarize(measured)
    print_results(results)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults written to {RESULTS.relative_to(ROOT)}")


# --- data -------------------------------------------------------------------------------------


def table_path(rows: int) -> Path:
    """Where the benchmark Delta table of `rows` rows lives."""
    return BENCH_DIR / f"snapshot_{rows // 1_000_000}m"


def ensure_table(rows: int) -> None:
    """Write the deterministic benchmark table unless it is already there."""
    from deltalake import write_deltalake

    path = table_path(rows)
    if (path / "_delta_log" / "00000000000000000000.json").exists():
        return
    print(f"generating {rows:,} rows into {path.relative_to(ROOT)} ...", flush=True)
    reader = pa.RecordBatchReader.from_batches(SCHEMA_ARROW, _generated_batches(rows))
    write_deltalake(str(path), reader, mode="overwrite")


def _generated_batches(rows: int) -> Iterator[pa.RecordBatch]:
    import polars as pl

    for start in range(0, rows, GENERATE_CHUNK):
        stop = min(rows, start + GENERATE_CHUNK)
        i = pl.col("id")
        frame = pl.select(id=pl.int_range(start, stop, dtype=pl.Int64)).with_columns(
            name=pl.format("name_{}", i % 100_000),
            email=pl.format("user{}@example.com", i),
            city=pl.format("city_{}", i % 1_000),
            ts=(pl.lit(1_600_000_000_000_000) + i * 1_000).cast(pl.Datetime("us", "UTC")),
            amount=(((i * 7_919) % 10_000_000).cast(pl.Decimal(10, 2)) / 100).cast(
                pl.Decimal(10, 2)
            ),
            score=(i * 0.618) % 1.0,
            active=(i % 3) == 0,
            day=(i % 20_000).cast(pl.Int32).cast(pl.Date),
            qty=(i % 1_000).cast(pl.Int32),
        )
        yield from frame.to_arrow().cast(SCHEMA_ARROW).to_batches()


def synced_table(rows: int) -> SyncedTable:
    """The spec entry a sync of the `rows` table runs with (defaults everywhere else)."""
    spec = parse_spec(
        {
            "synced_tables": [
                {
                    "name": f"bench.{SCHEMA}.{table_path(rows).name}",
                    "source": str(table_path(rows)),
                    "primary_key": ["id"],
                }
            ]
        },
        path=BENCH_DIR / "bench.yaml",
    )
    return spec.synced_tables[0]


# --- Postgres ---------------------------------------------------------------------------------


def bench_dsn(dsn: str) -> str:
    """The DSN of the dedicated benchmark database, created on first use."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if exists.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    return psycopg.conninfo.make_conninfo(dsn, dbname=DATABASE)


def checkpoint(dsn: str) -> None:
    """Flush the previous load's WAL so it does not land inside the next timing."""
    # Not a superuser: no checkpoint, and timings are a little noisier.
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        contextlib.suppress(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("CHECKPOINT")


# --- measurements -----------------------------------------------------------------------------


def measure_size(dsn: str, rows: int, *, repeat: int) -> dict[str, Any]:
    """Both ceilings, sync and verify of the `rows` table, `repeat` times each, alternating;
    each with the CPU-seconds it cost the server and the client."""
    workers = connections_for(rows, synced_table(rows).max_connections)
    copy_file = BENCH_DIR / "ceiling.copy"
    part_files = [BENCH_DIR / f"ceiling-part{i}.copy" for i in range(workers)]
    postmaster = cpu.postmaster_pid(dsn)
    ceiling: list[float] = []
    parallel: list[float] = []
    syncs: list[dict[str, Any]] = []
    verifies: list[dict[str, Any]] = []
    cpus: dict[str, list[cpu.Cpu]] = {step: [] for step in CPU_STEPS}

    def child(flag: str, step: str) -> dict[str, Any]:
        checkpoint(dsn)  # the previous step's dirty pages are flushed outside this one
        with cpu.measured(postmaster) as used:
            result = time_child(dsn, flag, rows)
        used.client = result["cpu_seconds"]  # the timed part only, not the interpreter's start
        cpus[step].append(used)
        return result

    try:
        columns = encode_ceiling_files(rows, copy_file, part_files)
        for attempt in range(1, repeat + 1):
            for files, times, step in ((
                ([copy_file], ceiling, "ceiling"), (part_files, parallel, "parallel ceiling")
            )):  # fmt: skip
                checkpoint(dsn)  # the previous step's dirty pages are flushed outside this one
                with cpu.measured(postmaster) as used:
                    times.append(time_ceiling(dsn, files, columns))
                cpus[step].append(used)
            syncs.append(child("--sync-child", "snapshot sync"))
            verifies.append(child("--verify-child", "verify"))
            print(
                f"  {rows:,} rows, run {attempt}: ceiling {ceiling[-1]:.2f} s, "
                f"{workers}-connection ceiling {parallel[-1]:.2f} s, "
                f"sync {syncs[-1]['seconds']:.2f} s, peak RSS {syncs[-1]['peak_rss_mb']:.0f} MB "
                f"(after imports {syncs[-1]['import_rss_mb']:.0f} MB), "
                f"verify {verifies[-1]['seconds']:.2f} s, "
                f"peak RSS {verifies[-1]['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    finally:
        for path in [copy_file, *part_files]:
            path.unlink(missing_ok=True)
    synced = {s["rows"] for s in syncs}
    if synced != {rows}:
        raise SystemExit(f"the sync of the {rows:,}-row table landed {synced} rows")
    if not all(v["equal"] for v in verifies):
        raise SystemExit(f"verify found the synced {rows:,}-row table different from its source")
    return {
        "rows": rows,
        "connections": workers,
        "ceiling_seconds": statistics.median(ceiling),
        "parallel_ceiling_seconds": statistics.median(parallel),
        "sync_seconds": statistics.median(s["seconds"] for s in syncs),
        "verify_seconds": statistics.median(v["seconds"] for v in verifies),
        "cpu_seconds": {step: _median_cpu(used) for step, used in cpus.items()},
        # Memory is the steadier figure: report the worst run.
        "peak_rss_mb": max(s["peak_rss_mb"] for s in syncs),
        "import_rss_mb": max(s["import_rss_mb"] for s in syncs),
        "verify_peak_rss_mb": max(v["peak_rss_mb"] for v in verifies),
        "ceiling_runs": ceiling,
        "parallel_ceiling_runs": parallel,
        "sync_runs": [s["seconds"] for s in syncs],
        "verify_runs": [v["seconds"] for v in verifies],
        "peak_rss_runs": [s["peak_rss_mb"] for s in syncs],
    }


CPU_STEPS = ("ceiling", "parallel ceiling", "snapshot sync", "verify")


def _median_cpu(runs: list[cpu.Cpu]) -> dict[str, float | None]:
    servers = [r.server for r in runs if r.server is not None]
    return {
        "server": statistics.median(servers) if servers else None,
        "client": statistics.median(r.client for r in runs),
    }


def encode_ceiling_files(rows: int, whole: Path, parts: list[Path]) -> tuple[PgColumn, ...]:
    """Write the `rows` table as binary COPY streams with the project's own encoder: all of it
    into `whole`, and split in consecutive runs of batches, one per file of `parts`."""
    source = open_source(str(table_path(rows)), storage_options={})
    columns = pg_columns(source.schema, table=CEILING_TABLE)
    print(f"encoding the {rows:,}-row ceiling files (not timed) ...", flush=True)
    share = -(-rows // len(parts))
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(path.open("wb")) for path in [whole, *parts]]
        for out in outs:
            out.write(binary_copy.HEADER)
        written = 0
        for batch in read_batches(source):
            encoded = binary_copy.encode_rows(to_wire(batch, columns), columns)
            outs[0].write(encoded)
            outs[1 + min(written // share, len(parts) - 1)].write(encoded)
            written += batch.num_rows
        for out in outs:
            out.write(binary_copy.TRAILER)
    return columns


def time_ceiling(dsn: str, copy_files: list[Path], columns: tuple[PgColumn, ...]) -> float:
    """Seconds of one psql \\copy per file of `copy_files`, all at once, into a fresh index-free
    table, then ADD PRIMARY KEY."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ddl.drop_table(SCHEMA, CEILING_TABLE))
        conn.execute(ddl.create_table(SCHEMA, CEILING_TABLE, columns))
        table = ddl.qualified(SCHEMA, CEILING_TABLE).as_string(conn)
        add_key = ddl.add_primary_key(SCHEMA, CEILING_TABLE, f"{CEILING_TABLE}_pkey", ("id",))
        add_key_sql = add_key.as_string(conn)
    checkpoint(dsn)
    psql = [shutil.which("psql") or "/usr/bin/psql", dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    # The same setting the sync builds its keys with.
    key = [*psql, "-c", "SET maintenance_work_mem = '256MB'", "-c", add_key_sql]
    started = time.monotonic()
    loads = [
        subprocess.Popen([*psql, "-c", f"\\copy {table} FROM '{path}' WITH (FORMAT binary)"])
        for path in copy_files
    ]
    if any(load.wait() != 0 for load in loads):
        raise SystemExit("a psql \\copy of the ceiling failed")
    subprocess.run(key, check=True)
    seconds = time.monotonic() - started
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ddl.drop_table(SCHEMA, CEILING_TABLE))
    return seconds


def time_child(dsn: str, flag: str, rows: int) -> dict[str, Any]:
    """The JSON line of `--sync-child ROWS` or `--verify-child ROWS` run in a fresh interpreter."""
    checkpoint(dsn)
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.snapshot", flag, str(rows)],
        cwd=ROOT,
        env={**os.environ, settings.ENV_PG_DSN: dsn},
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        raise SystemExit(f"{flag} of {rows:,} rows failed:\n{child.stderr}")
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def sync_once(rows: int) -> None:
    """One snapshot sync in this (fresh) process; prints seconds and peak RSS as a JSON line."""
    from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table

    table = synced_table(rows)
    import_rss = _peak_rss_mb()
    started, cpu_started = time.monotonic(), time.process_time()
    result = sync_table(table, settings.pg_dsn(), full_refresh=True)
    seconds = time.monotonic() - started
    report = {
        "rows": result.rows,
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_started,
        "peak_rss_mb": _peak_rss_mb(),
        "import_rss_mb": import_rss,
    }
    print(json.dumps(report))


def verify_once(rows: int) -> None:
    """One verify of the synced `rows` table in this (fresh) process; prints a JSON line."""
    from reverse_etl_assets.pipelines.delta_to_postgres.verify import verify_table

    table = synced_table(rows)
    started, cpu_started = time.monotonic(), time.process_time()
    result = verify_table(table, settings.pg_dsn())
    seconds = time.monotonic() - started
    report = {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_started,
        "equal": result.content_matches,
        "peak_rss_mb": _peak_rss_mb(),
    }
    print(json.dumps(report))


def _peak_rss_mb() -> float:
    """This process's peak RSS. Linux's ru_maxrss survives exec, so a child forked from a big
    parent would report the parent's peak; VmHWM belongs to the current address space only."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- report -----------------------------------------------------------------------------------


def summarize(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates, ratios and goal checks as one JSON-able document."""
    smallest_ceiling = sizes[0]["rows"] / sizes[0]["ceiling_seconds"]
    figures = []
    for size in sizes:
        ceiling_rate = size["rows"] / size["ceiling_seconds"]
        parallel_rate = size["rows"] / size["parallel_ceiling_seconds"]
        sync_rate = size["rows"] / size["sync_seconds"]
        figures.append(
            {
                **size,
                "ceiling_rows_per_second": ceiling_rate,
                "parallel_ceiling_rows_per_second": parallel_rate,
                "sync_rows_per_second": sync_rate,
                "ratio": sync_rate / ceiling_rate,
                "parallel_ratio": sync_rate / parallel_rate,
                "ratio_to_smallest_ceiling": sync_rate / smallest_ceiling,
                "verify_to_sync": size["verify_seconds"] / size["sync_seconds"],
            }
        )
    small, large = figures[0], figures[-1]
    return {
        "sizes": figures,
        "goals": {
            "ratio": {"goal": GOAL_RATIO, "met": all(f["ratio"] >= GOAL_RATIO for f in figures)},
            "parallel_ratio": {
                "goal": GOAL_PARALLEL_RATIO,
                "met": all(f["parallel_ratio"] >= GOAL_PARALLEL_RATIO for f in figures),
            },
            "verify_to_sync": {
                "goal": GOAL_VERIFY_RATIO,
                "met": all(f["verify_to_sync"] <= GOAL_VERIFY_RATIO for f in figures),
            },
            "peak_rss_mb": {
                "goal": GOAL_RSS_MB,
                "met": all(f["peak_rss_mb"] <= GOAL_RSS_MB for f in figures),
            },
            "flat_rss": {
                "goal": f"largest within {FLAT_TOLERANCE - 1:.0%} of smallest",
                "met": large["peak_rss_mb"] <= small["peak_rss_mb"] * FLAT_TOLERANCE,
            },
        },
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


def print_results(results: dict[str, Any]) -> None:
    """The results as a table, goals last."""
    print(
        f"\n{'':<24}{'rows':>11}{'seconds':>9}{'rows/s':>11}"
        f"{'ratio':>7}{'vs parallel':>13}{'peak RSS MB':>13}"
    )
    for f in results["sizes"]:
        print(
            f"{'ceiling, 1 connection':<24}{f['rows']:>11,}{f['ceiling_seconds']:>9.2f}"
            f"{f['ceiling_rows_per_second']:>11,.0f}{'1.00':>7}{'-':>13}{'-':>13}"
        )
        label = f"ceiling, {f['connections']} connections"
        print(
            f"{label:<24}{f['rows']:>11,}{f['parallel_ceiling_seconds']:>9.2f}"
            f"{f['parallel_ceiling_rows_per_second']:>11,.0f}"
            f"{f['ceiling_seconds'] / f['parallel_ceiling_seconds']:>7.2f}{'1.00':>13}{'-':>13}"
        )
        print(
            f"{'snapshot sync':<24}{f['rows']:>11,}{f['sync_seconds']:>9.2f}"
            f"{f['sync_rows_per_second']:>11,.0f}{f['ratio']:>7.2f}{f['parallel_ratio']:>13.2f}"
            f"{f['peak_rss_mb']:>13.0f}"
        )
        print(
            f"{'verify':<24}{f['rows']:>11,}{f['verify_seconds']:>9.2f}"
            f"{f['rows'] / f['verify_seconds']:>11,.0f}{'-':>7}{'-':>13}"
            f"{f['verify_peak_rss_mb']:>13.0f}"
        )
    print(
        "ceilings: psql \\copy of pre-encoded binary files into an index-free table + primary "
        "key; 1 connection, and as many parallel connections as the sync uses"
    )
    print(
        "seconds: median of the runs; peak RSS: highest run; ratio: rows/s to the same-size "
        "single-connection ceiling; vs parallel: to the parallel one"
    )
    smallest = results["sizes"][0]
    for f in results["sizes"][1:]:
        print(
            f"{f['rows']:,} rows against the {smallest['rows']:,}-row ceiling: "
            f"ratio {f['ratio_to_smallest_ceiling']:.2f}"
        )
    for f in results["sizes"]:
        print(
            f"{f['rows']:,} rows: verify / snapshot sync = {f['verify_to_sync']:.2f} "
            f"({f['verify_seconds']:.2f} s / {f['sync_seconds']:.2f} s); snapshot / parallel "
            f"ceiling = {f['parallel_ratio']:.2f}"
        )
    _print_cpu(results["sizes"])
    goals = results["goals"]
    print(
        f"\ngoals: ratio >= {GOAL_RATIO}: {_verdict(goals['ratio'])}; "
        f"vs parallel >= {GOAL_PARALLEL_RATIO}: {_verdict(goals['parallel_ratio'])}; "
        f"verify / sync <= {GOAL_VERIFY_RATIO}: {_verdict(goals['verify_to_sync'])}; "
        f"peak RSS <= {GOAL_RSS_MB} MB: {_verdict(goals['peak_rss_mb'])}; "
        f"peak RSS flat as rows grow 4x: {_verdict(goals['flat_rss'])}"
    )


def _print_cpu(sizes: list[dict[str, Any]]) -> None:
    """CPU-seconds per step, and what they allow on this machine's cores at best."""
    cores = os.cpu_count() or 1
    print(f"\nCPU-seconds (medians; server: Postgres; client: psql, or the sync's own process "
          f"after its imports), {cores} cores:")  # fmt: skip
    print(f"{'':<24}{'rows':>11}{'server':>9}{'client':>9}{'floor s':>9}{'seconds':>9}")
    timed = {
        "ceiling": "ceiling_seconds",
        "parallel ceiling": "parallel_ceiling_seconds",
        "snapshot sync": "sync_seconds",
        "verify": "verify_seconds",
    }
    for f in sizes:
        for step, used in f["cpu_seconds"].items():
            server = "n/a" if used["server"] is None else f"{used['server']:.2f}"
            floor = cpu.floor_seconds(cpu.Cpu(used["server"], used["client"]))
            print(f"{step:<24}{f['rows']:>11,}{server:>9}{used['client']:>9.2f}{floor:>9.2f}"
                  f"{f[timed[step]]:>9.2f}")  # fmt: skip
    print("floor: server and client CPU-seconds spread over every core, the least wall time "
          "they fit in")  # fmt: skip
    for f in sizes:
        used = f["cpu_seconds"]
        if used["snapshot sync"]["server"] is None or used["parallel ceiling"]["server"] is None:
            continue
        # The sync does the parallel ceiling's work and more (reading Delta, encoding, ANALYZE):
        # at the ceiling's own pace, with the extra CPU-seconds spread over every core.
        extra = sum(used["snapshot sync"].values()) - sum(used["parallel ceiling"].values())
        ceiling = f["parallel_ceiling_seconds"]
        best = ceiling / (ceiling + max(extra, 0.0) / cores)
        verify_floor = cpu.floor_seconds(cpu.Cpu(**used["verify"]))
        print(f"{f['rows']:,} rows: the sync spends {extra:.2f} CPU-seconds more than the "
              f"parallel ceiling; at the ceiling's pace with those spread over {cores} cores, "
              f"snapshot / parallel ceiling <= {best:.2f}; verify / snapshot sync >= "
              f"{verify_floor / f['sync_seconds']:.2f}")  # fmt: skip


def _verdict(goal: dict[str, Any]) -> str:
    return "met" if goal["met"] else "MISSED"


if __name__ == "__main__":
    main()
