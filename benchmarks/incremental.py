"""Incremental (triggered) sync speed and memory against the ceiling, in one run (`make bench`).

On the 2M-row benchmark table (version L) three ranges are committed, each on its own copy:
- `11%`: 10% of rows updated, 1% deleted, 1% new (three versions), synced with the defaults
  (the path chosen from measured cost), against the ceiling: binary COPY of the same deduplicated
  changes from a pre-encoded file into a temp stage + one INSERT ... ON CONFLICT DO UPDATE + one
  DELETE ... USING, in psql;
- `50%`: half the rows updated: the default path against both paths forced;
- `4x`: four times the changed keys of `11%`, the increment forced, against its ceiling: peak RSS
  must stay flat.
Each sync runs in a fresh interpreter (its own peak RSS) from Postgres restored at L. Also times
`verify` against a snapshot sync of the same table. Prints, never gates.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from psycopg import sql

from benchmarks import cpu
from benchmarks.snapshot import (
    BENCH_DIR,
    ROOT,
    SCHEMA_ARROW,
    _generated_batches,
    _peak_rss_mb,
    bench_dsn,
    checkpoint,
    ensure_table,
    table_path,
)
from reverse_etl_assets import settings
from reverse_etl_assets.delta.reader import open_source
from reverse_etl_assets.pipelines.delta_to_postgres.snapshot import INCREMENTAL_FILLFACTOR
from reverse_etl_assets.postgres import binary_copy, ddl
from reverse_etl_assets.postgres.protection import WRITER_SETTING
from reverse_etl_assets.schema.delta_to_postgres import key_columns, pg_columns, to_wire
from reverse_etl_assets.spec import SyncedTable, parse_spec

SCHEMA = "bench_incremental"  # not the snapshot benchmark's schema, which it drops
ROWS = 2_000_000
RESULTS = BENCH_DIR / "results-incremental.json"
NAME = f"bench.{SCHEMA}.incremental"
TABLE = "incremental"
SAVED = "incremental_at_l"
CEILING = "incremental_ceiling"
GOAL_RATIO = 0.8
GOAL_RSS_MB = 300
GOAL_PATH = 1.10  # the default path within 10% of the faster forced path
FLAT_TOLERANCE = 1.10  # "flat": 4x the changed keys peaks within 10% of 1x


@dataclass(frozen=True)
class Scenario:
    """A range committed on its own copy of the table: which rows it updates, deletes, adds."""

    name: str
    update: str  # Delta SQL predicate and the same rows as a polars expression
    updated: pl.Expr
    delete: str | None = None
    deleted: pl.Expr | None = None
    new_rows: int = 0

    @property
    def source(self) -> Path:
        return BENCH_DIR / f"incremental_2m_{self.name.rstrip('%x')}"


_ID = pl.col("id")
SCENARIOS = (
    Scenario(
        name="11%",
        update="id % 10 = 0",
        updated=_ID % 10 == 0,
        delete="id % 100 = 1",
        deleted=_ID % 100 == 1,
        new_rows=ROWS // 100,
    ),
    Scenario(name="50%", update="id % 2 = 0", updated=_ID % 2 == 0),
    Scenario(
        name="4x",
        update="id % 2 = 0 AND id % 10 < 8",
        updated=(_ID % 2 == 0) & (_ID % 10 < 8),
        delete="id % 2 = 1 AND id % 100 < 8",
        deleted=(_ID % 2 == 1) & (_ID % 100 < 8),
        new_rows=4 * (ROWS // 100),
    ),
)
SMALL, HALF, LARGE = SCENARIOS
FORCED_INCREMENT = 1.0  # full_refresh_threshold that keeps every range incremental


def main() -> None:
    """`python -m benchmarks.incremental [--repeat N]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--sync-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--threshold", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--full-refresh", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sync_child:
        sync_once(Path(args.source), threshold=args.threshold, full_refresh=args.full_refresh)
        return
    dsn = bench_dsn(settings.pg_dsn())
    results = run(dsn, repeat=args.repeat)
    RESULTS.write_text(json.dumps(results, indent=2))
    print_results(results)


def synced_table(source: Path, *, threshold: float | None = None) -> SyncedTable:
    """A triggered table over a benchmark copy; `threshold` set forces the share rule."""
    entry: dict[str, Any] = {
        "name": NAME,
        "source": str(source),
        "primary_key": ["id"],
        "mode": "triggered",
    }
    if threshold is not None:
        entry["full_refresh_threshold"] = threshold
    spec = parse_spec({"synced_tables": [entry]}, path=BENCH_DIR / "bench.yaml")
    return spec.synced_tables[0]


def run(dsn: str, *, repeat: int) -> dict[str, Any]:
    """Prepare L and the three ranges, then time ceilings and syncs `repeat` times each."""
    from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
    from reverse_etl_assets.pipelines.delta_to_postgres.verify import verify_table

    ensure_table(ROWS)
    for scenario in SCENARIOS:
        prepare_source(scenario.source)
    os.environ[settings.ENV_PG_DSN] = dsn
    print("initial snapshot of version L (not timed) ...", flush=True)
    start = time.monotonic()
    snapshot = sync_table(synced_table(SMALL.source), dsn, full_refresh=True)
    snapshot_seconds = time.monotonic() - start
    save_postgres_state(dsn)
    for scenario in SCENARIOS:
        commit_versions(scenario)
    files = {s.name: encode_ceiling_files(s) for s in (SMALL, LARGE)}

    runs: dict[str, list[dict[str, Any]]] = {}
    postmaster = cpu.postmaster_pid(dsn)

    def ceiling(scenario: Scenario) -> None:
        restore_postgres_state(dsn, into=CEILING, with_state=False)
        changes, deletes, _ = files[scenario.name]
        with cpu.measured(postmaster) as used:
            seconds = time_ceiling(dsn, changes, deletes)
        run = {"seconds": seconds, "cpu": asdict(used)}
        runs.setdefault(f"{scenario.name} ceiling", []).append(run)
        print(f"  {scenario.name} ceiling: {seconds:.2f} s", flush=True)

    def sync(scenario: Scenario, label: str, **options: Any) -> None:
        restore_postgres_state(dsn, into=TABLE, with_state=True)
        with cpu.measured(postmaster) as used:
            result = time_sync(dsn, scenario.source, **options)
        used.client = result["cpu_seconds"]  # the timed part only, not the interpreter's start
        result["cpu"] = asdict(used)
        runs.setdefault(f"{scenario.name} {label}", []).append(result)
        print(
            f"  {scenario.name} {label}: {result['seconds']:.2f} s ({result['path']}, "
            f"{result['changes']:,} changed keys), peak RSS {result['peak_rss_mb']:.0f} MB"
            + (f" [{result['reason']}]" if result["reason"] else ""),
            flush=True,
        )

    try:
        for attempt in range(1, repeat + 1):
            print(f"run {attempt} of {repeat}", flush=True)
            ceiling(SMALL)
            sync(SMALL, "default")
            sync(HALF, "default")
            sync(HALF, "forced incremental", threshold=FORCED_INCREMENT)
            sync(HALF, "forced snapshot", full_refresh=True)
            ceiling(LARGE)
            sync(LARGE, "forced incremental", threshold=FORCED_INCREMENT)
    finally:
        for changes, deletes, _ in files.values():
            changes.unlink(missing_ok=True)
            deletes.unlink(missing_ok=True)

    print("verify after the last sync ...", flush=True)
    verification = verify_table(synced_table(LARGE.source), dsn)
    if not verification.content_matches:
        raise SystemExit(f"the incremental sync did not land Delta: {verification.describe()}")
    return {
        "rows": ROWS,
        "changed_keys": {name: count for name, (_, _, count) in files.items()},
        "runs": runs,
        "snapshot_sync_seconds": snapshot_seconds,
        "snapshot_rows": snapshot.rows,
        "verify_seconds": verification.seconds,
        "verify_to_snapshot": verification.seconds / snapshot_seconds,
    }


def prepare_source(path: Path) -> None:
    """A fresh copy of the 2M-row table with the Change Data Feed on (version L = 1)."""
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(table_path(ROWS), path)
    DeltaTable(str(path)).alter.set_table_properties({"delta.enableChangeDataFeed": "true"})


def commit_versions(scenario: Scenario) -> None:
    """The scenario's update, delete and new rows: one Delta version each."""
    print(f"committing range {scenario.name} ...", flush=True)
    path = str(scenario.source)
    DeltaTable(path).update(
        updates={"name": "'changed'", "score": "score + 1"}, predicate=scenario.update
    )
    if scenario.delete is not None:
        DeltaTable(path).delete(scenario.delete)
    if scenario.new_rows:
        batches = _generated_batches(ROWS + scenario.new_rows)
        new = [b for b in batches if b.column(0)[0].as_py() >= ROWS]
        rows = pa.Table.from_batches(new, schema=SCHEMA_ARROW).slice(0, scenario.new_rows)
        write_deltalake(path, rows, mode="append")


def encode_ceiling_files(scenario: Scenario) -> tuple[Path, Path, int]:
    """The deduplicated changes of L+1..V as two pre-encoded binary COPY files: the rows of V
    whose keys the range touched, and the deleted keys (known from how they were made)."""
    source = open_source(str(scenario.source), storage_options={})
    columns = pg_columns(source.schema, table=NAME)
    frame = pl.from_arrow(source.table.to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    upserts = frame.filter(scenario.updated | (_ID >= ROWS)).to_arrow()
    del frame
    ids = pl.DataFrame({"id": range(ROWS)}, schema={"id": pl.Int64})
    gone = scenario.deleted if scenario.deleted is not None else pl.lit(False)
    deletes = ids.filter(gone).to_arrow()
    keys = key_columns(columns, ("id",))
    tag = scenario.source.name
    changes, deletes_file = BENCH_DIR / f"{tag}.changes.copy", BENCH_DIR / f"{tag}.deletes.copy"
    for path, data, cols in ((changes, upserts, columns), (deletes_file, deletes, keys)):
        with path.open("wb") as out:
            out.write(binary_copy.HEADER)
            for batch in data.to_batches(max_chunksize=65_536):
                out.write(binary_copy.encode_rows(to_wire(batch, cols), cols))
            out.write(binary_copy.TRAILER)
    count = upserts.num_rows + deletes.num_rows
    print(f"{scenario.name}: {count:,} deduplicated changes encoded (not timed)", flush=True)
    return changes, deletes_file, count


def save_postgres_state(dsn: str) -> None:
    """Keep the synced table at L, so every run starts from the same rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ddl.drop_table(SCHEMA, SAVED))
        conn.execute(
            sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(
                ddl.qualified(SCHEMA, SAVED), ddl.qualified(SCHEMA, TABLE)
            )
        )
        # Recreated each run: the state table's columns change between releases.
        conn.execute("DROP TABLE IF EXISTS reverse_etl.bench_saved_state")
        conn.execute(
            "CREATE TABLE reverse_etl.bench_saved_state AS "
            "SELECT * FROM reverse_etl.synced_tables WITH NO DATA"
        )
        conn.execute(
            "INSERT INTO reverse_etl.bench_saved_state "
            "SELECT * FROM reverse_etl.synced_tables WHERE name = %s",
            (NAME,),
        )


def restore_postgres_state(dsn: str, *, into: str, with_state: bool) -> None:
    """Put table `into` back at L (with the primary key), and the checkpoint if asked."""
    target, saved = ddl.qualified(SCHEMA, into), ddl.qualified(SCHEMA, SAVED)
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT set_config(%s, 'on', true)", (WRITER_SETTING,))
        if with_state:
            conn.execute(sql.SQL("TRUNCATE {}").format(target))
            conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(target, saved))
            conn.execute("DELETE FROM reverse_etl.synced_tables WHERE name = %s", (NAME,))
            conn.execute(
                "INSERT INTO reverse_etl.synced_tables SELECT * FROM reverse_etl.bench_saved_state"
            )
        else:
            conn.execute(ddl.drop_table(SCHEMA, into))
            # The same page layout as the synced table, so the ratio measures only our overhead.
            conn.execute(
                sql.SQL("CREATE TABLE {} WITH (fillfactor = {}) AS SELECT * FROM {}").format(
                    target, sql.Literal(INCREMENTAL_FILLFACTOR), saved
                )
            )
            conn.execute(ddl.add_primary_key(SCHEMA, into, f"{into}_pkey", ("id",)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(target))
    checkpoint(dsn)


def time_ceiling(dsn: str, changes: Path, deletes: Path) -> float:
    """psql: COPY the changes into a temp stage, one upsert, one delete, one transaction."""
    with psycopg.connect(dsn) as conn:
        target = ddl.qualified(SCHEMA, CEILING).as_string(conn)
        columns = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            (target,),
        ).fetchall()]  # fmt: skip
    updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in columns if c != "id")
    script = "\n".join(
        [
            "BEGIN;",
            f"CREATE TEMP TABLE stage (LIKE {target}) ON COMMIT DROP;",
            f"\\copy stage FROM '{changes}' WITH (FORMAT binary)",
            f"INSERT INTO {target} SELECT * FROM stage ON CONFLICT (id) DO UPDATE SET {updates};",
            "CREATE TEMP TABLE gone (id bigint) ON COMMIT DROP;",
            f"\\copy gone FROM '{deletes}' WITH (FORMAT binary)",
            f"DELETE FROM {target} t USING gone g WHERE t.id = g.id;",
            "COMMIT;",
        ]
    )
    psql = shutil.which("psql") or "/usr/bin/psql"
    started = time.monotonic()
    subprocess.run(
        [psql, dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1"], input=script, text=True, check=True
    )
    return time.monotonic() - started


def time_sync(dsn: str, source: Path, **options: Any) -> dict[str, Any]:
    """One sync in a fresh interpreter (its own peak RSS)."""
    command = [sys.executable, "-m", "benchmarks.incremental", "--sync-child"]
    command += ["--source", str(source)]
    if options.get("threshold") is not None:
        command += ["--threshold", str(options["threshold"])]
    if options.get("full_refresh"):
        command.append("--full-refresh")
    child = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, settings.ENV_PG_DSN: dsn},
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        raise SystemExit(f"the sync failed:\n{child.stderr}")
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def sync_once(source: Path, *, threshold: float | None, full_refresh: bool) -> None:
    """The child: one sync, printed as a JSON line."""
    from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table

    started, cpu_started = time.monotonic(), time.process_time()
    table = synced_table(source, threshold=threshold)
    result = sync_table(table, settings.pg_dsn(), full_refresh=full_refresh)
    report = {
        "seconds": time.monotonic() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "path": result.path,
        "changes": result.changes,
        "reason": result.reason,
        "estimates": result.estimates,
        "peak_rss_mb": _peak_rss_mb(),
    }
    print(json.dumps(report))


def print_results(r: dict[str, Any]) -> None:
    """The table people read: medians of the runs, ratios measured in the same run."""
    runs = r["runs"]

    def seconds(label: str) -> float:
        return statistics.median(x["seconds"] for x in runs[label])

    def rss(label: str) -> float:
        return max(x["peak_rss_mb"] for x in runs[label])

    def paths(label: str) -> str:
        return ", ".join(sorted({x["path"] for x in runs[label]}))

    print()
    print(f"incremental sync, {r['rows']:,}-row table x 10 columns (medians of the runs)")
    keys = r["changed_keys"][SMALL.name]
    ceiling, default = seconds("11% ceiling"), seconds("11% default")
    ratio = ceiling / default
    print(f"- {SMALL.name} of rows changed ({keys:,} changed keys):")
    print(f"    ceiling (psql COPY stage + upsert + delete): {ceiling:.2f} s, "
          f"{keys / ceiling:,.0f} changes/s")  # fmt: skip
    print(f"    default sync ({paths('11% default')}): {default:.2f} s, "
          f"{keys / default:,.0f} changes/s, {ratio:.2f} x ceiling (goal >= {GOAL_RATIO}: "
          f"{_met(ratio >= GOAL_RATIO)}), peak RSS {rss('11% default'):.0f} MB (goal <= "
          f"{GOAL_RSS_MB} MB: {_met(rss('11% default') <= GOAL_RSS_MB)})")  # fmt: skip
    half = {k: seconds(f"50% {k}") for k in ("default", "forced incremental", "forced snapshot")}
    faster = min(half["forced incremental"], half["forced snapshot"])
    print(f"- {HALF.name} of rows changed:")
    for label, value in half.items():
        print(f"    {label} ({paths('50% ' + label)}): {value:.2f} s, {value / faster:.2f} x "
              f"the faster forced path, peak RSS {rss('50% ' + label):.0f} MB")  # fmt: skip
    fastest = min(("forced incremental", "forced snapshot"), key=lambda k: half[k])
    same = paths("50% default") == paths(f"50% {fastest}")
    print(f"    default took the faster forced path ({paths('50% ' + fastest)}): {_met(same)}; "
          f"within {GOAL_PATH - 1:.0%} of its time: {_met(half['default'] <= GOAL_PATH * faster)}"
          + (NOISE if same else ""))  # fmt: skip
    large_keys = r["changed_keys"][LARGE.name]
    large_ceiling, large = seconds("4x ceiling"), seconds("4x forced incremental")
    flat = rss("4x forced incremental") / rss("11% default")
    print(f"- {large_keys:,} changed keys ({large_keys / keys:.1f} x), increment forced:")
    print(f"    ceiling {large_ceiling:.2f} s; sync {large:.2f} s, "
          f"{large_ceiling / large:.2f} x ceiling")  # fmt: skip
    print(f"    peak RSS {rss('4x forced incremental'):.0f} MB = {flat:.2f} x the 11% range's "
          f"(flat, goal <= {FLAT_TOLERANCE}: {_met(flat <= FLAT_TOLERANCE)})")  # fmt: skip
    _print_cpu(runs)
    print(f"verify after sync: {r['verify_seconds']:.2f} s = {r['verify_to_snapshot']:.2f} x a "
          f"snapshot sync of the same table ({r['snapshot_sync_seconds']:.2f} s)")  # fmt: skip
    print(f"results written to {RESULTS.relative_to(ROOT)}")


def _print_cpu(runs: dict[str, list[dict[str, Any]]]) -> None:
    """CPU-seconds of the ceilings and the syncs beside them (medians)."""
    print(f"CPU-seconds (medians; server: Postgres; client: psql, or the sync's own process after "
          f"its imports), {os.cpu_count()} cores:")  # fmt: skip
    for label in ("11% ceiling", "11% default", "4x ceiling", "4x forced incremental"):
        servers = [x["cpu"]["server"] for x in runs[label] if x["cpu"]["server"] is not None]
        server = f"{statistics.median(servers):.2f}" if servers else "n/a"
        client = statistics.median(x["cpu"]["client"] for x in runs[label])
        print(f"    {label}: server {server}, client {client:.2f}")


NOISE = " (the same path: the gap is the plan's few reads of the log and run-to-run noise)"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


if __name__ == "__main__":
    main()
