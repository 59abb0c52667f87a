"""CPU-seconds a benchmark step costs the Postgres server and its clients on this machine.

Wall time on a shared machine drifts with whatever else runs; CPU time drifts much less. And on a
machine with few cores, CPU time says what bounds a ratio: a step whose server and clients need
S CPU-seconds in all cannot finish in less than S / cores seconds, however well it overlaps.

The server's CPU is read from /proc: its postmaster, the children it has reaped (backends that
ended) and those still running. When the server is not on this machine, only the clients count.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Cpu:
    """CPU-seconds of one step: `server` is None when the server is not on this machine."""

    server: float | None = None
    client: float = 0.0

    @property
    def total(self) -> float:
        return (self.server or 0.0) + self.client


def postmaster_pid(dsn: str) -> int | None:
    """The pid of the server's postmaster when the server runs on this machine, else None."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        backend = _stat(row[0])
        if backend is None or _name(row[0]) != "postgres":
            return None
        parent = int(backend[1])
    return parent if _name(parent) == "postgres" else None


def server_seconds(postmaster: int) -> float:
    """CPU-seconds the server has used so far: the postmaster, its ended and running children.

    A backend that ends while its siblings are read moves from the running to the reaped: the
    postmaster's own figures are read before and after, and the read is retried until they agree.
    """
    for _ in range(_ATTEMPTS):
        before = _times(postmaster)
        running = 0
        for entry in os.listdir("/proc"):
            child = _stat(int(entry)) if entry.isdigit() else None
            if child is not None and int(child[1]) == postmaster:
                running += int(child[11]) + int(child[12])  # utime stime (a zombie's too)
        if _times(postmaster) == before:
            return (sum(before) + running) / _TICKS
    raise RuntimeError("the Postgres server's CPU time kept changing under every read")


_ATTEMPTS = 100


def _times(pid: int) -> tuple[int, ...]:
    """utime, stime, cutime, cstime of `pid`, in clock ticks."""
    stat = _stat(pid)
    if stat is None:
        raise RuntimeError(f"the Postgres postmaster (pid {pid}) is gone")
    return tuple(int(field) for field in stat[11:15])


@contextmanager
def measured(postmaster: int | None) -> Iterator[Cpu]:
    """The CPU-seconds of the block: the server's, and this process's children's (psql, or a
    child interpreter; a child that reports its own CPU replaces `client` afterwards)."""
    cpu = Cpu()
    server_before = None if postmaster is None else server_seconds(postmaster)
    children_before = _children_seconds()
    yield cpu
    if postmaster is not None and server_before is not None:
        cpu.server = server_seconds(postmaster) - server_before
    cpu.client = _children_seconds() - children_before


def floor_seconds(cpu: Cpu) -> float:
    """The least wall time `cpu` fits in on this machine's cores."""
    return cpu.total / (os.cpu_count() or 1)


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state is field 0), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
