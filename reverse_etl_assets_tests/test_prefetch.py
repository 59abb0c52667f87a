"""The prefetching worker: items in order, the producer's error raised to the consumer, and no
worker left running however the consumer stops (an error while sending, Ctrl-C)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from reverse_etl_assets.runtime.prefetch import prefetched


def workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "prefetch" and t.is_alive()]


def numbers(stop_with: BaseException | None = None) -> Iterator[int]:
    yield from range(100)
    if stop_with is not None:
        raise stop_with


def test_items_arrive_in_order_and_the_worker_ends() -> None:
    with prefetched(numbers(), depth=2) as items:
        assert list(items) == list(range(100))
    assert workers() == []


def test_the_producers_error_reaches_the_consumer_after_its_items() -> None:
    seen = []
    with (
        pytest.raises(OSError, match="vacuumed"),
        prefetched(numbers(OSError("vacuumed"))) as items,
    ):
        for item in items:
            seen.append(item)
    assert seen == list(range(100)) and workers() == []


def test_a_consumer_that_fails_stops_the_worker() -> None:
    with pytest.raises(OSError) as failed, prefetched(numbers()) as items:
        for item in items:
            if item == 1:
                raise OSError("server closed the connection unexpectedly")
    assert failed.value is not None  # still referenced, as a caller recording the failure does
    assert workers() == []


def test_ctrl_c_while_a_chunk_is_sent_stops_the_worker() -> None:
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt), prefetched(numbers()) as items:
        for _ in items:
            time.sleep(1.0)
    assert workers() == []
