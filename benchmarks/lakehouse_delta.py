"""Lakehouse sync, Delta side: mirror MERGE and history append speed (prints, never gates).

A 1M-row x 10-column mirror takes frames of random-key changes (60% updates, 20% deletes, 20%
inserts); each layout (file count / size, streamed_exec) is timed on a fresh copy of the mirror.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

from reverse_etl_assets.delta.writer import append_changes, merge_changes
from reverse_etl_assets.transform.lakehouse_changes import history_rows, mirror_changes

APP = "bench"
TS = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def make_rows(ids: pa.Array) -> dict[str, pa.Array]:
    """Ten columns: the key plus nine of mixed types (random values from pyarrow)."""
    n = len(ids)

    def ints(bits: int) -> pa.Array:
        return pc.cast(pc.floor(pc.multiply(pc.random(n), float(1 << bits))), pa.int64())

    cols: dict[str, pa.Array] = {"id": pc.cast(ids, pa.int64())}
    for i in range(3):
        cols[f"i{i}"] = ints(40)
    for i in range(3):
        cols[f"f{i}"] = pc.random(n)
    for i in range(2):
        cols[f"s{i}"] = pc.binary_join_element_wise("value-", pc.cast(ints(30), pa.string()), "")
    cols["ts"] = pc.cast(ints(50), pa.timestamp("us", "UTC"))
    return cols


def make_frame(rows: int, changes: int, rng: random.Random) -> pa.Table:
    """A frame of random-key updates, deletes and new inserts, one transaction per 100 changes."""
    n_upd, n_del = int(changes * 0.6), int(changes * 0.2)
    n_ins = changes - n_upd - n_del
    existing = rng.sample(range(rows), n_upd + n_del)
    ids = pa.array(existing + list(range(rows, rows + n_ins)), pa.int64())
    kinds = ["update_postimage"] * n_upd + ["delete"] * n_del + ["insert"] * n_ins
    cols = make_rows(ids)
    seq = pa.array(range(changes), pa.int64())
    cols.update(
        _pg_change_type=pa.array(kinds, pa.string()),
        _pg_lsn=pc.add(pc.divide(seq, 100), 1000),
        _pg_seq=pc.cast(pc.subtract(seq, pc.multiply(pc.divide(seq, 100), 100)), pa.int32()),
        _pg_xid=pc.divide(seq, 100),
        _pg_commit_time=pa.array([TS] * changes, pa.timestamp("us", "UTC")),
        _pg_unchanged=pa.nulls(changes, pa.list_(pa.string())),
    )
    return pa.table(cols)


def build_mirror(uri: str, rows: int, *, target_file_size: int | None) -> int:
    """Write the mirror (CDF on) in 100k-row batches; returns its file count."""
    schema = pa.table(make_rows(pa.array([0], pa.int64()))).schema

    def batches():  # type: ignore[no-untyped-def]
        for start in range(0, rows, 100_000):
            yield pa.record_batch(make_rows(pa.array(range(start, min(rows, start + 100_000)))))

    write_deltalake(
        uri,
        pa.RecordBatchReader.from_batches(schema, batches()),
        mode="overwrite",
        configuration={"delta.enableChangeDataFeed": "true"},
        target_file_size=target_file_size,
    )
    return len(DeltaTable(uri).file_uris())


def time_merge(base: str, work: str, frame: pa.Table) -> tuple[float, float, int]:
    """Seconds for the reduction and for the MERGE on a fresh copy of `base`; files after."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)
    start = time.perf_counter()
    changes = mirror_changes(frame, ["id"])
    reduced = time.perf_counter() - start
    start = time.perf_counter()
    merge_changes(work, changes, key_columns=["id"], app_id=APP, version=1)
    merged = time.perf_counter() - start
    return reduced, merged, len(DeltaTable(work).file_uris())


def main() -> None:
    """Run the measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="lakehouse-bench-"))
    rng = random.Random(1)
    frames = {n: make_frame(args.rows, n, rng) for n in (10_000, 100_000)}
    layouts = {"default (1 file)": None, "32 MB files": 32 << 20, "8 MB files": 8 << 20}
    for label, size in layouts.items():
        base = str(root / f"base-{size}")
        files = build_mirror(base, args.rows, target_file_size=size)
        for n, frame in frames.items():
            reduced, merged, after = time_merge(base, str(root / "work"), frame)
            print(
                f"merge {n:>7} changes into {args.rows} rows, {label}, {files} files: "
                f"reduce {reduced:.2f}s, merge {merged:.2f}s ({n / merged:,.0f} changes/s), "
                f"{after} files after"
            )
    # OLTP hot set: updates and deletes in the newest 5% of keys, so file pruning can help
    hot = make_frame(args.rows // 20, 10_000, rng)
    hot = hot.set_column(0, "id", pc.add(hot.column("id"), args.rows - args.rows // 20))
    for label, size in layouts.items():
        base = str(root / f"base-{size}")
        reduced, merged, after = time_merge(base, str(root / "work"), hot)
        print(
            f"merge   10000 hot-key changes, {label}: merge {merged:.2f}s "
            f"({10_000 / merged:,.0f} changes/s), {after} files after"
        )
    history = history_rows(frames[100_000])
    start = time.perf_counter()
    append_changes(str(root / "history"), history, app_id=APP, version=1)
    first = time.perf_counter() - start
    start = time.perf_counter()
    append_changes(str(root / "history"), history, app_id=APP, version=2)
    second = time.perf_counter() - start
    print(
        f"append 100000 history rows: create {first:.2f}s, append {second:.2f}s "
        f"({100_000 / second:,.0f} rows/s)"
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
