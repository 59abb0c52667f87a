"""Asset checks proving each synced table equals its Delta source at the checkpointed version.

Both checks come from one comparison (the pipeline's verify); blocking, ERROR on mismatch.
"""

from collections.abc import Iterator

import dagster as dg

from reverse_etl_assets.orchestration.resources import PostgresTarget
from reverse_etl_assets.pipelines.delta_to_postgres.verify import verify_table
from reverse_etl_assets.spec import SyncedTable

ROW_COUNT_CHECK = "row_count_matches_delta"
CONTENT_CHECK = "content_matches_delta"


def equality_checks(
    table: SyncedTable,
    key: dg.AssetKey,
    automation_condition: dg.AutomationCondition | None = None,
) -> dg.AssetChecksDefinition:
    """Row count and content hash of Postgres versus Delta at the checkpoint, on asset `key`;
    `automation_condition` says when they run on their own (the translator's)."""

    @dg.multi_asset_check(
        specs=[
            dg.AssetCheckSpec(
                ROW_COUNT_CHECK,
                asset=key,
                blocking=True,
                description="Postgres has as many rows as the Delta version in the checkpoint.",
                automation_condition=automation_condition,
            ),
            dg.AssetCheckSpec(
                CONTENT_CHECK,
                asset=key,
                blocking=True,
                description="Postgres rows equal the Delta rows (order-independent content hash).",
                automation_condition=automation_condition,
            ),
        ],
        name=f"{'__'.join(key.path)}__equals_delta",
    )
    def _checks(postgres: PostgresTarget) -> Iterator[dg.AssetCheckResult]:
        result = verify_table(table, postgres.get_dsn())
        common = {
            "delta_version": result.version,
            "postgres_rows": result.postgres_rows,
            "delta_rows": result.delta_rows,
            "seconds": round(result.seconds, 3),
        }
        yield dg.AssetCheckResult(
            check_name=ROW_COUNT_CHECK,
            asset_key=key,
            passed=result.rows_match,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=common,
        )
        yield dg.AssetCheckResult(
            check_name=CONTENT_CHECK,
            asset_key=key,
            passed=result.content_matches,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                **common,
                "postgres_hash": result.postgres_hash,
                "delta_hash": result.delta_hash,
                "differing_keys": dg.MetadataValue.json(list(result.differing_keys)),
                "detail": result.describe(),
            },
        )

    return _checks
