"""Produce the next items of a stream in a background thread while the caller consumes this one.

Reading and encoding (Parquet, Arrow compute and the COPY encoder release the GIL for most of
their work) then overlap with sending to Postgres instead of alternating with it. An error the
producer raises is raised to the consumer, in order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

_POLL_SECONDS = 0.1


class _End:
    """The producer's last message: the stream ended, or `error` stopped it."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


@contextmanager
def prefetched(items: Iterable[T], *, depth: int = 2) -> Iterator[Iterator[T]]:
    """The items of `items`, produced by a worker thread ahead of the consumer: at most `depth`
    queued, one more waiting to be queued, beside the one being consumed.

    Leaving the block, however (the stream consumed, an error while sending, Ctrl-C), stops
    the worker after the item it is producing and waits for it: nothing is left running."""
    ready: queue.Queue[T | _End] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item: T | _End) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand_over(item):
                    return
        except BaseException as exc:  # raised again in the consumer's thread
            hand_over(_End(exc))
            return
        hand_over(_End())

    def consume() -> Iterator[T]:
        while True:
            item = ready.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        yield consume()
    finally:
        stop.set()
        worker.join()
