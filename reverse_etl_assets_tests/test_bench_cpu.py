"""The benchmarks' CPU accounting reads the server's CPU-seconds from /proc."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from benchmarks import cpu


def test_server_cpu_counts_a_query_and_the_backend_that_ran_it(pg_dsn: str) -> None:
    postmaster = cpu.postmaster_pid(pg_dsn)
    if postmaster is None:
        pytest.skip("the test server is not on this machine")
    assert Path(f"/proc/{postmaster}/comm").read_text().strip() == "postgres"
    # The connection's backend ends inside the block: its CPU is counted as reaped.
    with cpu.measured(postmaster) as used, psycopg.connect(pg_dsn) as conn:
        conn.execute("SELECT sum(i) FROM generate_series(1, 3000000) AS i").fetchone()
    assert used.server is not None
    assert used.server >= 0.1, used
    assert used.client < used.server
    assert cpu.floor_seconds(used) > 0


def test_no_server_cpu_for_a_server_elsewhere() -> None:
    with cpu.measured(None) as used:
        pass
    assert used.server is None
    assert used.total == used.client
