"""Differential test of the Delta -> Postgres increment: a seeded random workload on a real
Delta table, synced every few versions, and after every sync the Postgres table equals the
Delta table's current version read by deltalake (every row, every column, exact values).

A failure prints the seed, the operation log and a sample of the differing keys; the same seed
replays the same workload.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable
from psycopg import sql

from reverse_etl_assets.delta import change_feed, preimages, reader
from reverse_etl_assets.errors import DataError
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.spec import SyncedTable
from reverse_etl_assets_tests.delta_workload import DeltaWorkload, Shape
from reverse_etl_assets_tests.helpers import fetch, one_table, stored_state

TARGET = sql.Identifier("gold", "items_synced")


def expected_rows(workload: DeltaWorkload) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """What Postgres must hold: the source's rows by key, NULL keys skipped, NUL bytes stripped
    (`on_invalid_characters: strip`), with a timeseries the latest row per key."""
    columns = workload.columns
    ts = columns.index("ts")
    found: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in workload.rows():
        key = workload.key_of(row)
        if None in key:
            continue
        values = tuple(_stripped(row[c]) for c in columns)
        key = tuple(_stripped(k) for k in key)
        if workload.shape.timeseries and key in found and _newer(found[key][ts], values[ts]):
            continue
        assert workload.shape.timeseries or key not in found, f"workload made duplicate {key}"
        found[key] = values
    return found


def _newer(stored: int | None, other: int | None) -> bool:
    """Whether `ts` value `stored` outranks `other` (NULLs last; no ties by construction)."""
    return other is None or (stored is not None and stored > other)


def _stripped(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_stripped(v) for v in value]
    return value


def synced_rows(
    dsn: str, key: tuple[str, ...], columns: tuple[str, ...]
) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), TARGET
    )
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(query).fetchall()
    positions = [columns.index(k) for k in key]
    return {tuple(r[i] for i in positions): tuple(r) for r in rows}


def everything(dsn: str) -> list[tuple[Any, ...]]:
    """The synced table's rows, whatever its columns, in a fixed order."""
    return sorted(fetch(dsn, sql.SQL("SELECT * FROM {}").format(TARGET)), key=repr)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 300 else text[:300] + f"... ({len(text)} chars)"


def differences(
    want: dict[tuple[Any, ...], tuple[Any, ...]],
    got: dict[tuple[Any, ...], tuple[Any, ...]],
    columns: tuple[str, ...],
) -> list[str]:
    """Up to 5 differing keys of each kind, described."""
    missing = sorted((k for k in want if k not in got), key=repr)
    extra = sorted((k for k in got if k not in want), key=repr)
    changed = sorted((k for k in want if k in got and want[k] != got[k]), key=repr)
    lines = [f"missing in Postgres: {k} (source {_short(want[k])})" for k in missing[:5]]
    lines += [f"not in the source: {k} (Postgres {_short(got[k])})" for k in extra[:5]]
    for k in changed[:5]:
        cols = [c for c, a, b in zip(columns, want[k], got[k], strict=True) if a != b]
        lines.append(
            f"differs at {k} in {cols}: source {_short(want[k])} Postgres {_short(got[k])}"
        )
    if lines:
        lines.insert(0, f"{len(missing)} missing, {len(extra)} extra, {len(changed)} differ")
    return lines


class Differential:
    """One seeded run: the workload, the two ways of syncing it and the log of both."""

    def __init__(
        self, tmp_path: Path, dsn: str, *, seed: int, shape: Shape, scale: int = 1
    ) -> None:
        self.dsn = dsn
        self.seed = seed
        self.rng = random.Random(seed)
        self.workload = DeltaWorkload(tmp_path / "src", shape, self.rng, scale=scale)
        self.log: list[str] = []
        entry: dict[str, Any] = {
            "source": str(tmp_path / "src"),
            "primary_key": list(shape.key),
            "mode": "triggered",
            "on_invalid_characters": "strip",
        }
        if shape.timeseries:
            entry["timeseries_key"] = "ts"
        # Forced increments (the share rule at 100%: only a range changing more keys than the
        # table holds is swapped), and the default choice by measured cost.
        self.forced = one_table(tmp_path, **entry, full_refresh_threshold=1.0)
        self.by_cost = one_table(tmp_path, **entry)
        self.paths: list[str] = []

    def fail(self, problem: str, details: list[str]) -> None:
        pytest.fail(
            f"seed {self.seed}: {problem}\n"
            + "\n".join(details)
            + "\noperations:\n  "
            + "\n  ".join(_short(line) for line in self.log[-60:]),
            pytrace=False,
        )

    def sync(self, table: SyncedTable) -> None:
        if self.workload.shape.timeseries:
            broken = self.workload.break_ties()
            if broken:
                self.log.append(broken)
        result = sync_table(table, self.dsn)
        self.paths.append(result.path)
        how = "forced" if table is self.forced else "by cost"
        self.log.append(f"sync ({how}) -> {result.path} at v{result.version} {result.reason}")
        self.check()

    def check(self) -> None:
        """Postgres equals the source's current version; the checkpoint says so."""
        version = DeltaTable(str(self.workload.path)).version()
        want = expected_rows(self.workload)
        columns = self.workload.columns
        got = synced_rows(self.dsn, self.workload.shape.key, columns)
        diff = differences(want, got, columns)
        if diff:
            self.fail(f"Postgres differs from Delta version {version}", diff)
        state = stored_state(self.dsn)
        null_keys = sum(None in self.workload.key_of(r) for r in self.workload.rows())
        facts = (state.last_synced_version, state.rows, state.skipped_null_keys)
        if facts != (version, len(got), null_keys):
            self.fail(
                "the checkpoint is wrong",
                [f"(version, rows, skipped_null_keys) = {facts}, "
                 f"expected {(version, len(got), null_keys)}"],
            )  # fmt: skip

    def refuse_duplicates(self) -> None:
        """Two rows of one key in one version: a DataError, Postgres and checkpoint unchanged;
        once the source removes one, the next sync lands the source (as a snapshot)."""
        before = everything(self.dsn)
        version = stored_state(self.dsn).last_synced_version
        self.log.append(self.workload.duplicate())
        try:
            result = sync_table(self.rng.choice([self.forced, self.by_cost]), self.dsn)
        except DataError as exc:
            self.log.append(f"sync refused: {str(exc)[:160]}")
            if "duplicate" not in str(exc):
                self.fail("the wrong error for a duplicate key", [str(exc)])
        else:
            self.fail("a duplicate key was synced", [f"{result}"])
        if everything(self.dsn) != before:
            self.fail("a refused sync changed Postgres", [])
        if stored_state(self.dsn).last_synced_version != version:
            self.fail("a refused sync moved the checkpoint", [])
        self.log.append(self.workload.fix_duplicate())

    def run(self, *, rows: int, syncs: int, duplicates: bool = False) -> None:
        self.log.append(self.workload.create(rows))
        self.sync(self.forced)
        for _ in range(syncs):
            for _ in range(self.rng.randint(1, 4)):
                self.log.append(self.workload.step())
            if duplicates and self.rng.random() < 0.15:
                self.refuse_duplicates()
                if self.rng.random() < 0.5:
                    continue  # the duplicates and their fix land in one range, later
            self.sync(self.forced if self.rng.random() < 0.75 else self.by_cost)
        # Snapshots have their reasons (duplicates fixed later, a vacuumed range, a rewrite of
        # the whole table), but the increment is what is under test.
        assert self.paths.count("incremental") >= len(self.paths) // 3, self.paths


@pytest.fixture
def tiny_batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Feed batches of a few rows (a range spans many chunks) and a pairing budget most change
    files exceed (their preimages are staged unpaired)."""
    monkeypatch.setattr(change_feed, "BATCH_ROWS", 5)
    monkeypatch.setattr(reader, "BATCH_ROWS", 5)
    monkeypatch.setattr(preimages, "BUDGET_BYTES", 300)
    yield


SHAPES = {
    "single key": Shape(),
    "composite key": Shape(key=("id", "region")),
    "composite key, partitioned": Shape(key=("id", "region"), partition_by=("region",)),
    "partitioned off the key": Shape(partition_by=("region",)),
    "partitioned by a boolean": Shape(partition_by=("flag",)),
    "timeseries": Shape(timeseries=True),
    "timeseries, composite key, partitioned": Shape(
        key=("id", "region"), partition_by=("region",), timeseries=True
    ),
}


@pytest.mark.parametrize(
    ("shape", "seed"),
    [("single key", 1), ("composite key, partitioned", 2), ("timeseries", 3)],
)
def test_random_versions_sync_exactly(tmp_path: Path, pg_dsn: str, shape: str, seed: int) -> None:
    run = Differential(tmp_path, pg_dsn, seed=seed, shape=SHAPES[shape])
    run.run(rows=40, syncs=10, duplicates=not SHAPES[shape].timeseries)


def test_random_versions_sync_exactly_in_tiny_batches(
    tmp_path: Path, pg_dsn: str, tiny_batches: None
) -> None:
    run = Differential(tmp_path, pg_dsn, seed=4, shape=SHAPES["partitioned off the key"])
    run.run(rows=40, syncs=10)


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("seed", [100])
def test_random_versions_sync_exactly_many_seeds(
    tmp_path: Path, pg_dsn: str, shape: str, seed: int
) -> None:
    run = Differential(tmp_path, pg_dsn, seed=seed, shape=SHAPES[shape])
    run.run(rows=200, syncs=16, duplicates=not SHAPES[shape].timeseries)


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_random_versions_sync_exactly_in_tiny_batches_many_seeds(
    tmp_path: Path, pg_dsn: str, tiny_batches: None, shape: str
) -> None:
    run = Differential(tmp_path, pg_dsn, seed=200, shape=SHAPES[shape])
    run.run(rows=100, syncs=12, duplicates=not SHAPES[shape].timeseries)


@pytest.mark.slow
def test_random_versions_sync_exactly_at_scale(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Change files of thousands of rows read in feed batches of 200: several batches a file,
    each file still paired whole (the same shape as files of tens of thousands of rows in
    batches of 16,384, at a twentieth of the rows)."""
    monkeypatch.setattr(change_feed, "BATCH_ROWS", 200)
    monkeypatch.setattr(reader, "BATCH_ROWS", 200)
    run = Differential(tmp_path, pg_dsn, seed=300, shape=SHAPES["single key"], scale=50)
    run.run(rows=2_000, syncs=4, duplicates=True)
