"""The follower loop both directions run: ask "is there more?", apply it, sleep, retry.

The direction supplies a `Worker`; the loop owns stopping, the deadline, backoff and recovery.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Protocol

from reverse_etl_assets.errors import is_transient

log = logging.getLogger(__name__)

BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 15.0


class Worker(Protocol):
    """What a follower does; the loop calls these in order and never at the same time."""

    name: str

    def has_more(self) -> bool:
        """Whether something new waits (may connect first); cheap, called every cycle."""
        ...

    def apply(self) -> bool:
        """Land what waits; True when something landed (the loop then asks again at once)."""
        ...

    def recover(self) -> None:
        """After a retryable error: drop whatever the error left broken (a lost connection)."""
        ...

    def close(self) -> None:
        """Release everything cleanly: the loop is over."""
        ...


class Backoff:
    """Exponential delays with jitter, so followers do not reconnect in lockstep."""

    def __init__(self) -> None:
        self.attempt = 0

    def reset(self) -> None:
        """Back to the first delay after a success."""
        self.attempt = 0

    def next(self) -> float:
        """The next delay, in seconds."""
        delay = min(BACKOFF_FIRST_SECONDS * 2 ** min(self.attempt, 10), BACKOFF_MAX_SECONDS)
        self.attempt += 1
        return delay * random.uniform(0.8, 1.2)


def run_worker(
    worker: Worker,
    *,
    stop: threading.Event,
    max_seconds: float | None,
    idle_seconds: float,
    retryable: Callable[[BaseException], bool] = is_transient,
) -> float:
    """Run `worker` until `stop` is set or `max_seconds` pass; returns the seconds it ran.

    A retryable error (one the error policy marks transient) waits with backoff and recovers;
    any other error ends the loop and propagates. The worker is always closed.
    """
    started = time.monotonic()
    deadline = None if max_seconds is None else started + max_seconds
    backoff = Backoff()
    try:
        while not stop.is_set() and not _past(deadline):
            try:
                moved = worker.has_more() and worker.apply()
                backoff.reset()
                if not moved:  # after a batch, look again at once: more may have landed
                    _sleep(stop, idle_seconds, deadline)
            except Exception as exc:
                if not retryable(exc):
                    raise
                delay = backoff.next()
                log.warning("%s: %s; retrying in %.1fs", worker.name, exc, delay)
                worker.recover()
                _sleep(stop, delay, deadline)
    finally:
        worker.close()
    return time.monotonic() - started


def _sleep(stop: threading.Event, seconds: float, deadline: float | None) -> None:
    if deadline is not None:
        seconds = min(seconds, deadline - time.monotonic())
    if seconds > 0:
        stop.wait(seconds)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
