"""Errors in Dagster's terms, the same for both directions: a transient error asks for a retry
(`RetryRequested`), a terminal one is a `Failure` naming what failed, the error and what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from reverse_etl_assets.errors import ReverseEtlError, translate

# A transient error (a lock held by a reader, a dropped connection, a sync that moved the
# checkpoint meanwhile) retries the step this often, waiting RETRY_SECONDS x attempt.
MAX_RETRIES = 3
RETRY_SECONDS = 10.0
RETRIED = f"retried {MAX_RETRIES} times; check the server, then materialize again"


@dataclass(frozen=True)
class Subject:
    """What failed: its kind ("synced table", "lakehouse sync"), name, metadata key, and the
    operator's next step after a terminal error."""

    kind: str
    name: str
    metadata_key: str
    next_step: Callable[[ReverseEtlError], str]


def dagster_error(
    log: logging.Logger | dg.DagsterLogManager, retry_number: int, subject: Subject, exc: Exception
) -> Exception:
    """`RetryRequested` for a transient error with retries left, else a `Failure` (or `exc`
    itself when the error policy does not know it: a bug shows as one)."""
    failure = exc if isinstance(exc, ReverseEtlError) else translate(exc)
    if failure is None:
        return exc
    if not failure.terminal and retry_number < MAX_RETRIES:
        wait = RETRY_SECONDS * (retry_number + 1)
        log.warning(f"{subject.name}: {failure} (transient: retrying in {wait:.0f}s)")
        return dg.RetryRequested(max_retries=MAX_RETRIES, seconds_to_wait=wait)
    return failure_of(subject, failure)


def failure_of(subject: Subject, failure: ReverseEtlError) -> dg.Failure:
    """A `Failure` naming the subject, the error and what to do."""
    return dg.Failure(
        description=f"{subject.kind} {subject.name}: {failure}",
        metadata={
            subject.metadata_key: subject.name,
            "reverse_etl/error": type(failure).__name__,
            "reverse_etl/terminal": failure.terminal,
            "reverse_etl/what_to_do": subject.next_step(failure) if failure.terminal else RETRIED,
        },
        allow_retries=False,
    )
