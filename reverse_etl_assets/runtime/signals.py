"""SIGTERM / SIGINT for a foreground follower: the first asks it to stop after the batch in
flight, a second interrupts at once (the batch in flight rolls back)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set `stop` on the first SIGTERM or SIGINT; raise KeyboardInterrupt on the second."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: roll back the batch in flight
        print(f"{signal.Signals(signum).name}: stopping after the batch in flight", file=sys.stderr)
        # Event.set takes a lock the interrupted main thread may hold: set it from another thread.
        threading.Thread(target=stop.set, daemon=True).start()

    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
