"""Incremental (triggered) sync speed against the ceiling, in the same run (`make bench`).

On the 2M-row benchmark table, three versions are committed (10% of rows updated, 1% deleted,
1% new). Ceiling: binary COPY of the same deduplicated changes from a pre-encoded file into a temp
stage + one INSERT ... ON CONFLICT DO UPDATE + one DELETE ... USING, in psql. Also times `verify`
against a snapshot sync of the same table. Prints, never gates.
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
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
from deltalake import DeltaTable, write_deltalake
from psycopg import sql

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
SOURCE = BENCH_DIR / "incremental_2m"
RESULTS = BENCH_DIR / "results-incremental.json"
NAME = f"bench.{SCHEMA}.incremental"
TABLE = "incremental"
SAVED = "incremental_at_l"
CEILING = "incremental_ceiling"
GOAL_RATIO = 0.8
GOAL_RSS_MB = 300


def main() -> None:
    """`python -m benchmarks.incremental [--repeat N]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sync-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sync_child:
        sync_once()
        return
    dsn = bench_dsn(settings.pg_dsn())
    results = run(dsn, repeat=args.repeat)
    RESULTS.write_text(json.dumps(results, indent=2))
    print_results(results)


def synced_table() -> SyncedTable:
    """A triggered table over the benchmark copy. The threshold is raised so the increment
    (12% of the rows) is applied as changes; at the default 10% a snapshot swap would run."""
    spec = parse_spec(
        {
            "synced_tables": [
                {
                    "name": NAME,
                    "source": str(SOURCE),
                    "primary_key": ["id"],
                    "mode": "triggered",
                    "full_refresh_threshold": 0.5,
                }
            ]
        },
        path=BENCH_DIR / "bench.yaml",
    )
    return spec.synced_tables[0]


def run(dsn: str, *, repeat: int) -> dict[str, Any]:
    """Prepare L, commit the three versions, then time ceiling and sync `repeat` times each."""
    from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
    from reverse_etl_assets.pipelines.delta_to_postgres.verify import verify_table

    ensure_table(ROWS)
    prepare_source()
    table = synced_table()
    os.environ[settings.ENV_PG_DSN] = dsn
    print("initial snapshot of version L (not timed) ...", flush=True)
    start = time.monotonic()
    snapshot = sync_table(table, dsn, full_refresh=True)
    snapshot_seconds = time.monotonic() - start
    save_postgres_state(dsn)
    commit_versions()
    changes_file, deletes_file, changed_keys = encode_ceiling_files()

    ceilings, syncs = [], []
    try:
        for attempt in range(1, repeat + 1):
            restore_postgres_state(dsn, into=CEILING, with_state=False)
            ceilings.append(time_ceiling(dsn, changes_file, deletes_file))
            restore_postgres_state(dsn, into=TABLE, with_state=True)
            syncs.append(time_sync(dsn))
            print(
                f"  run {attempt}: ceiling {ceilings[-1]:.2f} s, sync {syncs[-1]['seconds']:.2f}"
                f" s ({syncs[-1]['path']}), peak RSS {syncs[-1]['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    finally:
        changes_file.unlink(missing_ok=True)
        deletes_file.unlink(missing_ok=True)

    print("verify after the sync ...", flush=True)
    verification = verify_table(table, dsn)
    if not verification.content_matches:
        raise SystemExit(f"the incremental sync did not land Delta: {verification.describe()}")
    ceiling_seconds = statistics.median(ceilings)
    sync_seconds = statistics.median(s["seconds"] for s in syncs)
    return {
        "rows": ROWS,
        "changed_keys": changed_keys,
        "ceiling_seconds": ceiling_seconds,
        "ceiling_changes_per_second": changed_keys / ceiling_seconds,
        "sync_seconds": sync_seconds,
        "sync_changes_per_second": changed_keys / sync_seconds,
        "ratio": ceiling_seconds / sync_seconds,
        "peak_rss_mb": max(s["peak_rss_mb"] for s in syncs),
        "sync_paths": sorted({s["path"] for s in syncs}),
        "ceiling_runs": ceilings,
        "sync_runs": [s["seconds"] for s in syncs],
        "snapshot_sync_seconds": snapshot_seconds,
        "snapshot_rows": snapshot.rows,
        "verify_seconds": verification.seconds,
        "verify_to_snapshot": verification.seconds / snapshot_seconds,
    }


def prepare_source() -> None:
    """A fresh copy of the 2M-row table with the Change Data Feed on (version L = 1)."""
    shutil.rmtree(SOURCE, ignore_errors=True)
    shutil.copytree(table_path(ROWS), SOURCE)
    DeltaTable(str(SOURCE)).alter.set_table_properties({"delta.enableChangeDataFeed": "true"})


def commit_versions() -> None:
    """10% of rows updated, 1% deleted, 1% new: three Delta versions."""
    print("committing three versions (10% updated, 1% deleted, 1% new) ...", flush=True)
    DeltaTable(str(SOURCE)).update(
        updates={"name": "'changed'", "score": "score + 1"}, predicate="id % 10 = 0"
    )
    DeltaTable(str(SOURCE)).delete("id % 100 = 1")
    new = [b for b in _generated_batches(ROWS + ROWS // 100) if b.column(0)[0].as_py() >= ROWS]
    import pyarrow as pa

    new_rows = pa.Table.from_batches(new, schema=SCHEMA_ARROW).slice(0, ROWS // 100)
    write_deltalake(str(SOURCE), new_rows, mode="append")


def encode_ceiling_files() -> tuple[Path, Path, int]:
    """The deduplicated changes of L+1..V as two pre-encoded binary COPY files: the rows of V
    whose keys the versions touched, and the deleted keys (known from how they were made)."""
    source = open_source(str(SOURCE), storage_options={})
    columns = pg_columns(source.schema, table=NAME)
    frame = pl.from_arrow(source.table.to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    id_ = pl.col("id")
    upserts = frame.filter((id_ % 10 == 0) | (id_ >= ROWS)).to_arrow()
    deletes = pl.DataFrame({"id": range(1, ROWS, 100)}, schema={"id": pl.Int64}).to_arrow()
    del frame
    keys = key_columns(columns, ("id",))
    changes, deletes_file = BENCH_DIR / "changes.copy", BENCH_DIR / "deletes.copy"
    for path, data, cols in ((changes, upserts, columns), (deletes_file, deletes, keys)):
        with path.open("wb") as out:
            out.write(binary_copy.HEADER)
            for batch in data.to_batches(max_chunksize=65_536):
                out.write(binary_copy.encode_rows(to_wire(batch, cols), cols))
            out.write(binary_copy.TRAILER)
    count = upserts.num_rows + deletes.num_rows
    print(f"{count:,} deduplicated changes encoded (not timed)", flush=True)
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
        conn.execute(
            "CREATE TABLE IF NOT EXISTS reverse_etl.bench_saved_state AS "
            "SELECT * FROM reverse_etl.synced_tables WITH NO DATA"
        )
        conn.execute("DELETE FROM reverse_etl.bench_saved_state")
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


def time_sync(dsn: str) -> dict[str, Any]:
    """One incremental sync in a fresh interpreter (its own peak RSS)."""
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.incremental", "--sync-child"],
        cwd=ROOT,
        env={**os.environ, settings.ENV_PG_DSN: dsn},
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        raise SystemExit(f"the incremental sync failed:\n{child.stderr}")
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def sync_once() -> None:
    """The child: one sync, printed as a JSON line."""
    from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table

    started = time.monotonic()
    result = sync_table(synced_table(), settings.pg_dsn())
    report = {
        "seconds": time.monotonic() - started,
        "path": result.path,
        "changes": result.changes,
        "peak_rss_mb": _peak_rss_mb(),
    }
    print(json.dumps(report))


def print_results(r: dict[str, Any]) -> None:
    """The table people read."""
    ok = "met" if r["ratio"] >= GOAL_RATIO else "NOT met"
    rss = "met" if r["peak_rss_mb"] <= GOAL_RSS_MB else "NOT met"
    print()
    print(f"incremental sync, {r['rows']:,}-row table, {r['changed_keys']:,} changed keys")
    print(f"  ceiling (psql COPY stage + upsert + delete): {r['ceiling_seconds']:.2f} s, "
          f"{r['ceiling_changes_per_second']:,.0f} changes/s")  # fmt: skip
    print(f"  reverse_etl incremental sync ({', '.join(r['sync_paths'])}): "
          f"{r['sync_seconds']:.2f} s, {r['sync_changes_per_second']:,.0f} changes/s")  # fmt: skip
    print(f"  ratio to ceiling: {r['ratio']:.2f} (goal >= {GOAL_RATIO}: {ok})")
    print(f"  peak RSS of the sync: {r['peak_rss_mb']:.0f} MB (goal <= {GOAL_RSS_MB} MB: {rss})")
    print(f"verify after sync: {r['verify_seconds']:.2f} s = {r['verify_to_snapshot']:.2f} x a "
          f"snapshot sync of the same table ({r['snapshot_sync_seconds']:.2f} s)")  # fmt: skip
    print(f"results written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
