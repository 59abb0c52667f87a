"""Asset checks of a lakehouse sync: each mirror equals its Postgres table (row count and
content, sample keys when not), and the slot does not hold more WAL than a threshold.

The mirror is as of the last LSN landed: a change still on its way shows as a difference until
the next drain, so the equality checks are ERROR but not blocking.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from reverse_etl_assets.orchestration.lakehouse_resource import LakehouseSyncResource
from reverse_etl_assets.orchestration.lakehouse_translator import LakehouseTable
from reverse_etl_assets.pipelines.postgres_to_delta.status import read_lakehouse_status
from reverse_etl_assets.pipelines.postgres_to_delta.verify import MirrorCheck, verify_lakehouse
from reverse_etl_assets.spec import LakehouseSync

ROW_COUNT_CHECK = "row_count_matches_postgres"
CONTENT_CHECK = "content_matches_postgres"
RETAINED_WAL_CHECK = "slot_retained_wal_under_threshold"


def mirror_checks(
    sync: LakehouseSync,
    mirrors: dict[dg.AssetKey, LakehouseTable],
    automation_condition: dg.AutomationCondition | None = None,
) -> dg.AssetChecksDefinition:
    """Row count and content of each mirror of `sync` against its Postgres table, now;
    `automation_condition` says when they run on their own (the translator's)."""
    specs = []
    for key, table in mirrors.items():
        specs += [
            dg.AssetCheckSpec(
                ROW_COUNT_CHECK,
                asset=key,
                description=f"The mirror has as many rows as {table.postgres_table} in Postgres.",
                automation_condition=automation_condition,
            ),
            dg.AssetCheckSpec(
                CONTENT_CHECK,
                asset=key,
                description=f"The mirror's rows equal those of {table.postgres_table}, value for "
                "value (sample keys of what differs).",
                automation_condition=automation_condition,
            ),
        ]

    @dg.multi_asset_check(
        specs=specs, name=f"lakehouse_sync__{sync.name}__mirrors_equal_postgres", can_subset=True
    )
    def _checks(
        context: dg.AssetCheckExecutionContext, lakehouse: LakehouseSyncResource
    ) -> Iterator[dg.AssetCheckResult]:
        found = {check.table: check for check in verify_lakehouse(sync, lakehouse.get_dsn())}
        selected = {key for key in context.selected_asset_check_keys}
        for key, table in mirrors.items():
            check = found.get(table.postgres_table)
            for name in (ROW_COUNT_CHECK, CONTENT_CHECK):
                if dg.AssetCheckKey(key, name) in selected:
                    yield _result(key, name, table, check)

    return _checks


def _result(
    key: dg.AssetKey, name: str, table: LakehouseTable, check: MirrorCheck | None
) -> dg.AssetCheckResult:
    if check is None:  # verify compares tables with a primary key only
        return dg.AssetCheckResult(
            check_name=name,
            asset_key=key,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{table.postgres_table} has no primary key, so it has no mirror to "
            "compare; set `mirror: false` or add a primary key",
        )
    passed = check.count_matches if name == ROW_COUNT_CHECK else check.content_matches
    metadata: dict[str, Any] = {
        "postgres_rows": check.postgres_rows,
        "mirror_rows": check.mirror_rows,
    }
    if name == CONTENT_CHECK:
        metadata.update(
            {
                "missing_in_mirror": dg.MetadataValue.json(check.missing),
                "extra_in_mirror": dg.MetadataValue.json(check.extra),
                "different_values": dg.MetadataValue.json(check.changed),
                "detail": check.describe(),
            }
        )
    return dg.AssetCheckResult(
        check_name=name,
        asset_key=key,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=check.describe(),
    )


def retained_wal_checks(
    sync: LakehouseSync,
    keys: list[dg.AssetKey],
    automation_condition: dg.AutomationCondition | None = None,
) -> dg.AssetChecksDefinition:
    """On each Delta table of `sync` (the slot feeds them all): the WAL the slot keeps on the
    server stays under `LakehouseSyncResource.max_retained_wal_bytes`; WARN above it."""

    @dg.multi_asset_check(
        specs=[
            dg.AssetCheckSpec(
                RETAINED_WAL_CHECK,
                asset=key,
                description=f"Replication slot {sync.slot} keeps less WAL on the server than "
                "the threshold (REVERSE_ETL_MAX_RETAINED_WAL_BYTES, default 1 GiB).",
                automation_condition=automation_condition,
            )
            for key in keys
        ],
        name=f"lakehouse_sync__{sync.name}__slot_retained_wal",
        can_subset=True,
    )
    def _checks(
        context: dg.AssetCheckExecutionContext, lakehouse: LakehouseSyncResource
    ) -> Iterator[dg.AssetCheckResult]:
        status = read_lakehouse_status(sync, lakehouse.get_dsn())
        threshold = lakehouse.max_retained_wal_bytes
        retained = status.retained_wal_bytes
        if retained is not None:
            passed = retained <= threshold
            description = (
                f"slot {sync.slot} keeps {retained:,} bytes of WAL "
                f"({'under' if passed else 'over'} the threshold of {threshold:,})"
            )
        elif status.last_lsn is None:
            passed, description = True, f"slot {sync.slot} does not exist yet (never synced)"
        else:
            passed = False
            description = status.message or f"slot {sync.slot} is missing"
        facts = {
            "slot": sync.slot,
            "retained_wal_bytes": retained,
            "threshold_bytes": threshold,
            "lag_bytes": status.lag_bytes,
        }
        metadata = {k: v for k, v in facts.items() if v is not None}
        for check_key in context.selected_asset_check_keys:
            yield dg.AssetCheckResult(
                check_name=RETAINED_WAL_CHECK,
                asset_key=check_key.asset_key,
                passed=passed,
                severity=dg.AssetCheckSeverity.WARN,
                metadata=metadata,
                description=description,
            )

    return _checks
