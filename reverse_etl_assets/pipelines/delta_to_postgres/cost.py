"""Which path is cheaper for a range: what an increment and a snapshot swap would take, estimated
from the rates this table's own earlier syncs reached (kept in the state table).

An increment costs per changed row (the Delta log counts them before anything is read), a
snapshot per row of the source; each has a fixed part. A table that never ran a path large enough
to measure it starts from rates measured on the benchmark machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from reverse_etl_assets.postgres.state import TableState

# First-time rates, measured by `make bench` (2 cores shared with Postgres on loopback, 2,000,000
# rows x 10 columns): a snapshot swap loads about 500,000 rows/s; an increment applies about
# 90,000 changed rows/s (the rows the Delta log reports: an update counts once) on the 11% range,
# less on ranges whose change files are too large to leave update preimages out. Hence a
# snapshot wins from about 18% of the rows changed.
SNAPSHOT_ROWS_PER_SECOND = 500_000.0
INCREMENTAL_CHANGES_PER_SECOND = 90_000.0
# What each path costs whatever its size: a snapshot builds a table, its indexes and swaps it; an
# increment stages, nets and commits. Roughly what each takes on the test suite's small tables.
SNAPSHOT_FIXED_SECONDS = 0.3
INCREMENTAL_FIXED_SECONDS = 0.1
# A sync smaller than this measures mostly its fixed part: its rate is not kept.
MIN_MEASURED = 10_000
# Weight of the newest measurement in the kept rate (a moving average: one noisy run on a shared
# machine moves the estimate halfway, not all the way).
NEWEST_WEIGHT = 0.5

SNAPSHOT = "snapshot"
INCREMENTAL = "incremental"


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """The seconds each path would take for one range."""

    snapshot_seconds: float
    incremental_seconds: float
    changed_rows: int
    source_rows: int

    @property
    def cheaper(self) -> str:
        """SNAPSHOT or INCREMENTAL (an increment on a tie: it touches less)."""
        return SNAPSHOT if self.snapshot_seconds < self.incremental_seconds else INCREMENTAL

    def as_dict(self) -> dict[str, float]:
        """Seconds per path, for the result, the status and the Dagster metadata."""
        return {
            SNAPSHOT: round(self.snapshot_seconds, 3),
            INCREMENTAL: round(self.incremental_seconds, 3),
        }

    def describe(self) -> str:
        """Why the cheaper path, e.g. 'incremental: ~2.1 s estimated vs ~5.8 s for a snapshot
        (~220,000 changed rows in the Delta log, 2,000,000 rows)'."""
        size = f"~{self.changed_rows:,} changed rows in the Delta log, {self.source_rows:,} rows"
        snapshot, increment = _seconds(self.snapshot_seconds), _seconds(self.incremental_seconds)
        if self.cheaper == SNAPSHOT:
            return f"snapshot: ~{snapshot} estimated vs ~{increment} for the increment ({size})"
        return f"incremental: ~{increment} estimated vs ~{snapshot} for a snapshot ({size})"


def estimate(stored: TableState | None, *, changed_rows: int, source_rows: int) -> Estimate:
    """Both paths' seconds for a range of `changed_rows` over a source of `source_rows`."""
    snapshot_rate = (stored and stored.snapshot_rows_per_second) or SNAPSHOT_ROWS_PER_SECOND
    incremental_rate = (
        stored and stored.incremental_changes_per_second
    ) or INCREMENTAL_CHANGES_PER_SECOND
    return Estimate(
        snapshot_seconds=SNAPSHOT_FIXED_SECONDS + source_rows / snapshot_rate,
        incremental_seconds=INCREMENTAL_FIXED_SECONDS + changed_rows / incremental_rate,
        changed_rows=changed_rows,
        source_rows=source_rows,
    )


def learned_rate(
    previous: float | None, *, units: int | None, seconds: float, fixed: float
) -> float | None:
    """The rate to keep after a sync moved `units` (rows or changed rows) in `seconds`: the
    moving average with this measurement, or `previous` when the sync was too small to tell."""
    if units is None or units < MIN_MEASURED or seconds <= 0:
        return previous
    measured = units / max(seconds - fixed, seconds / 2)
    if previous is None:
        return measured
    return NEWEST_WEIGHT * measured + (1 - NEWEST_WEIGHT) * previous


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value >= 0.1 else "0.1 s"
