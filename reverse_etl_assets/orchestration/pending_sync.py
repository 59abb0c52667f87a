"""What a synced-table asset returns: a planned sync, landed by the Postgres IO manager.

The plan pinned the source's version and holds no rows: the IO manager streams the snapshot or
the Change Data Feed range into the Postgres the plan was read from, with its checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reverse_etl_assets.pipelines.delta_to_postgres.plan import SyncPlan


@dataclass(frozen=True)
class PendingSync:
    """A planned sync of one synced table and the Postgres it lands in."""

    plan: SyncPlan
    dsn: str = field(repr=False)  # may hold a password: never in a repr

    def describe(self) -> str:
        """One line for the run's log: the path, the versions and why."""
        plan = self.plan
        start = "nothing synced" if plan.start is None else f"version {plan.start.version}"
        line = f"{plan.path} from {start} to version {plan.version}"
        return f"{line} ({plan.reason})" if plan.reason else line
