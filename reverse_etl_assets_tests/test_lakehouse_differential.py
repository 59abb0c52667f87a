"""Lakehouse syncs against a seeded random workload: after every drain the mirror equals the
Postgres table to the last value, and the history holds each committed change exactly once.

The workload mixes inserts, value and key updates, deletes, delete + reinsert of one key,
updates that leave a TOASTed value unchanged, truncates, rolled-back transactions and
rolled-back savepoints, over most of the column types the product maps; the slow seeds also add
and drop columns mid-stream. Postgres is the oracle
for values; the generator only tracks which keys exist and which changes each transaction made.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable
from psycopg import sql

from reverse_etl_assets.pipelines.postgres_to_delta.run import sync_lakehouse
from reverse_etl_assets.pipelines.postgres_to_delta.stream import ChangeStream
from reverse_etl_assets.spec import LakehouseSync
from reverse_etl_assets_tests.lakehouse_helpers import history, lakehouse_sync

# Logical column -> Postgres type; the physical names come from a `Shape`.
COLUMNS = {
    "id": "int PRIMARY KEY",
    "n": "numeric(12,3)",
    "l": "bigint",
    "t": "text",
    "doc": "text",
    "j": "jsonb",
    "ts": "timestamptz",
    "flag": "bool",
    "raw": "bytea",
    "tags": "text[]",
    "nums": "int[]",
}
# Columns added (and dropped) mid-stream: int, no default, so older rows read NULL.
EXTRA = "extra"
KEY_SPACE = 60
# Characters that break naive quoting, CSV, array literals or UTF-8 handling.
TRICKY = "aZ09 ,;'\"\\{}()[]\n\t\r%_.üß€😀NULL"


@dataclass(frozen=True)
class Shape:
    """Where the table lives and what its columns are called."""

    schema: str
    table: str
    names: dict[str, str]
    identity_full: bool

    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.table)

    def col(self, logical: str) -> sql.Identifier:
        return sql.Identifier(self.names[logical])


PLAIN = {c: c for c in COLUMNS}
# Quotes, spaces, dots, upper case and non-ASCII in every name the product has to carry.
HOSTILE = {
    "id": "Id",
    "n": 'amount "net"',
    "l": "a.b",
    "t": "Text Col",
    "doc": "döc",
    "j": "j$on",
    "ts": "TS",
    "flag": "is-flag",
    "raw": "raw'bytes",
    "tags": "tags[]",
    "nums": "NUMS",
}


@dataclass
class Workload:
    """The random generator and what it knows: the live keys and each committed transaction's
    changes as (xid, [(change type, key), ...])."""

    rng: random.Random
    shape: Shape
    live: set[int] = field(default_factory=set)
    committed: list[tuple[int, list[tuple[str, int | None]]]] = field(default_factory=list)
    aborted_xids: list[int] = field(default_factory=list)

    # Values.

    def text(self, low: int = 0, high: int = 12) -> str:
        return "".join(self.rng.choice(TRICKY) for _ in range(self.rng.randint(low, high)))

    def doc(self) -> str | None:
        roll = self.rng.random()
        if roll < 0.1:
            return None
        if roll < 0.25:
            return self.text()
        # Random letters do not compress: stored out of line (TOASTed), so an update that
        # leaves it alone sends it as 'unchanged'.
        alphabet = string.ascii_letters + string.digits
        size = self.rng.randint(2_500, 6_000)
        return "".join(self.rng.choices(alphabet, k=size)) + self.text(0, 3)

    def value_columns(self) -> list[str]:
        return [c for c in self.shape.names if c != "id"]

    def value(self, column: str) -> Any:
        if column.startswith(EXTRA):
            return None if self.rng.random() < 0.3 else self.rng.randint(-9, 9)
        if column != "doc" and self.rng.random() < 0.12:
            return None
        rng = self.rng
        if column == "n":
            return Decimal(rng.randint(-(10**12) + 1, 10**12 - 1)) / 1000
        if column == "l":
            return rng.choice([0, -(2**63), 2**63 - 1, rng.randint(-(2**40), 2**40)])
        if column == "t":
            return self.text()
        if column == "doc":
            return self.doc()
        if column == "j":
            return json.dumps(
                {self.text(1, 4): [rng.randint(-5, 5), None, self.text(0, 4)], "x": rng.random()}
            )
        if column == "ts":
            offset = timezone(timedelta(minutes=rng.choice([0, 330, -420, 60])))
            moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
                microseconds=rng.randint(0, 4_000_000_000_000_000)
            )
            return moment.astimezone(offset)
        if column == "flag":
            return rng.random() < 0.5
        if column == "raw":
            return rng.randbytes(rng.randint(0, 40))
        if column == "tags":
            return [
                None if rng.random() < 0.1 else self.text(0, 6) for _ in range(rng.randint(0, 4))
            ]
        if column == "nums":
            return [
                None if rng.random() < 0.1 else rng.randint(-(2**31), 2**31 - 1)
                for _ in range(rng.randint(0, 4))
            ]
        raise AssertionError(column)

    # Statements.

    def insert(self, conn: psycopg.Connection, key: int) -> None:
        columns = list(self.shape.names)
        values = [key, *(self.value(c) for c in columns[1:])]
        conn.execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                self.shape.ident(),
                sql.SQL(", ").join(self.shape.col(c) for c in columns),
                sql.SQL(", ").join(self._placeholder(c) for c in columns),
            ),
            values,
        )

    def update(self, conn: psycopg.Connection, key: int, *, new_key: int | None) -> None:
        # Mostly leave `doc` alone: its TOASTed value then travels as 'unchanged'.
        pool = (
            self.value_columns()
            if self.rng.random() < 0.2
            else [c for c in self.value_columns() if c != "doc"]
        )
        columns = self.rng.sample(pool, self.rng.randint(0 if new_key else 1, 3))
        sets = [(c, self.value(c)) for c in columns]
        if new_key is not None:
            sets.append(("id", new_key))
        conn.execute(
            sql.SQL("UPDATE {} SET {} WHERE {} = %s").format(
                self.shape.ident(),
                sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(self.shape.col(c), self._placeholder(c))
                    for c, _ in sets
                ),
                self.shape.col("id"),
            ),
            [v for _, v in sets] + [key],
        )

    def delete(self, conn: psycopg.Connection, key: int) -> None:
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE {} = %s").format(
                self.shape.ident(), self.shape.col("id")
            ),
            [key],
        )

    def _placeholder(self, column: str) -> sql.Composable:
        return sql.SQL("%s::jsonb") if column == "j" else sql.SQL("%s")

    # Transactions.

    def transaction(self, conn: psycopg.Connection) -> None:
        """One random transaction: committed, rolled back, or with a rolled-back savepoint."""
        rng = self.rng
        live = set(self.live)
        events: list[tuple[str, int | None]] = []
        conn.execute("BEGIN")
        xid = conn.execute("SELECT pg_current_xact_id()::text::bigint % 4294967296").fetchone()
        assert xid is not None
        savepoint: tuple[set[int], int] | None = None
        for _ in range(rng.randint(1, 5)):
            if savepoint is None and rng.random() < 0.1:
                conn.execute("SAVEPOINT s")
                savepoint = (set(live), len(events))
            self._statement(conn, live, events)
            if savepoint is not None and rng.random() < 0.3:
                conn.execute("ROLLBACK TO SAVEPOINT s")
                live, kept = savepoint
                del events[kept:]
                savepoint = None
        if rng.random() < 0.1:
            conn.execute("ROLLBACK")
            self.aborted_xids.append(int(xid[0]))
            return
        conn.execute("COMMIT")
        self.live = live
        if events:
            self.committed.append((int(xid[0]), events))

    def _statement(
        self, conn: psycopg.Connection, live: set[int], events: list[tuple[str, int | None]]
    ) -> None:
        rng = self.rng
        free = [k for k in range(1, KEY_SPACE) if k not in live]
        roll = rng.random()
        full = self.shape.identity_full
        if roll < 0.02:
            conn.execute(sql.SQL("TRUNCATE {}").format(self.shape.ident()))
            live.clear()
            events.append(("truncate", None))
        elif (roll < 0.3 or not live) and free:
            key = rng.choice(free)
            self.insert(conn, key)
            live.add(key)
            events.append(("insert", key))
        elif roll < 0.6:
            key = rng.choice(sorted(live))
            self.update(conn, key, new_key=None)
            if full:
                events.append(("update_preimage", key))
            events.append(("update_postimage", key))
        elif roll < 0.72 and free:
            key, new = rng.choice(sorted(live)), rng.choice(free)
            self.update(conn, key, new_key=new)
            live.discard(key)
            live.add(new)
            events += [("update_preimage", key), ("update_postimage", new)]
        elif roll < 0.87:
            key = rng.choice(sorted(live))
            self.delete(conn, key)
            live.discard(key)
            events.append(("delete", key))
        else:  # the same key deleted and inserted again in one transaction
            key = rng.choice(sorted(live))
            self.delete(conn, key)
            self.insert(conn, key)
            events += [("delete", key), ("insert", key)]


def create_table(dsn: str, shape: Shape) -> None:
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(shape.col(c), sql.SQL(kind)) for c, kind in COLUMNS.items()
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        if shape.schema != "public":
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(shape.schema)))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(shape.ident(), columns))
        # Out of line without compression: every long `doc` is a TOASTed value.
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STORAGE EXTERNAL").format(
                shape.ident(), shape.col("doc")
            )
        )
        if shape.identity_full:
            conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(shape.ident()))


def postgres_rows(dsn: str, shape: Shape) -> list[dict[str, Any]]:
    """The table's rows by logical column name, ordered by key (jsonb as its text form)."""
    selected = sql.SQL(", ").join(
        sql.SQL("{}::text").format(shape.col(c)) if c == "j" else shape.col(c) for c in shape.names
    )
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                selected, shape.ident(), shape.col("id")
            )
        ).fetchall()
    return [dict(zip(shape.names, row, strict=True)) for row in rows]


def logical(row: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """A row by logical column name; a column the row does not have (yet) is NULL."""
    return {c: row.get(physical) for c, physical in shape.names.items()}


def mirror_rows(sync: LakehouseSync, shape: Shape) -> list[dict[str, Any]]:
    rows = DeltaTable(sync.mirror_uri(shape.table)).to_pyarrow_table().to_pylist()
    return sorted((logical(r, shape) for r in rows), key=lambda r: r["id"])


def assert_rows_equal(got: list[dict[str, Any]], want: list[dict[str, Any]], where: str) -> None:
    assert [r["id"] for r in got] == [r["id"] for r in want], f"{where}: keys differ"
    for mine, theirs in zip(got, want, strict=True):
        for column in theirs:
            assert mine[column] == theirs[column], (where, mine["id"], column)


def replay(rows: list[dict[str, Any]], shape: Shape) -> list[dict[str, Any]]:
    """The table as the history tells it: every change applied in commit order."""
    state: dict[int, dict[str, Any]] = {}
    for row in rows:
        kind, values = row["_pg_change_type"], logical(row, shape)
        if kind in ("insert", "update_postimage"):
            state[values["id"]] = values
        elif kind in ("delete", "update_preimage"):
            state.pop(values["id"], None)
        else:
            state.clear()
    return [state[k] for k in sorted(state)]


def check(sync: LakehouseSync, dsn: str, shape: Shape, work: Workload, snapshot: int) -> None:
    """Mirror equals Postgres; the history replays to Postgres and holds exactly the committed
    changes, each once, in each transaction's order."""
    want = postgres_rows(dsn, shape)
    assert_rows_equal(mirror_rows(sync, shape), want, "mirror")
    rows = history(sync.history_uri(shape.table))
    assert_rows_equal(replay(rows, shape), want, "history replay")
    streamed = rows[snapshot:]
    assert all(r["_pg_xid"] is None for r in rows[:snapshot])
    by_xid: dict[int, list[tuple[str, int | None]]] = {}
    for row in streamed:
        key = row[shape.names["id"]]
        by_xid.setdefault(row["_pg_xid"], []).append((row["_pg_change_type"], key))
    assert by_xid == dict(work.committed)
    assert not set(by_xid) & set(work.aborted_xids)
    positions = [(r["_pg_lsn"], r["_pg_seq"], r["_pg_change_type"]) for r in streamed]
    assert len(positions) == len(set(positions))


def alter_columns_of(conn: psycopg.Connection, shape: Shape, rng: random.Random) -> None:
    """Add a column (its name as hostile as the table's), or drop one added before."""
    extras = [c for c in shape.names if c.startswith(EXTRA)]
    if extras and rng.random() < 0.4:
        gone = rng.choice(extras)
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(shape.ident(), shape.col(gone))
        )
        del shape.names[gone]
        return
    logical = f"{EXTRA}{len(extras) + 1}_{rng.randint(0, 999)}"
    shape.names[logical] = logical if shape.names["id"] == "id" else f"{logical.upper()} .x"
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN {} int").format(shape.ident(), shape.col(logical))
    )


def run_workload(
    dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    seed: int,
    shape: Shape,
    batches: int,
    per_batch: int,
    alter_columns: bool = False,
) -> None:
    """Random batches, each drained and checked; about a third of the drains die after their
    Delta commits and before acknowledging, so the next one gets those transactions again."""
    shape = Shape(shape.schema, shape.table, dict(shape.names), shape.identity_full)
    create_table(dsn, shape)
    work = Workload(random.Random(seed), shape)
    crashes = random.Random(-seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(8):
            work.transaction(conn)
    snapshot = len(work.live)
    work.committed.clear()  # these reach Delta through the snapshot
    if shape.schema == "public":
        sync = lakehouse_sync(tmp_path, tables=[f"public.{shape.table}"])
    else:
        sync = lakehouse_sync(tmp_path, tables=[], schemas=[shape.schema])
    sync_lakehouse(sync, dsn)
    check(sync, dsn, shape, work, snapshot)
    for batch in range(batches):
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(per_batch):
                if alter_columns and crashes.random() < 0.15:
                    alter_columns_of(conn, shape, crashes)
                work.transaction(conn)
        with monkeypatch.context() as crash:
            if crashes.random() < 0.35:
                crash.setattr(ChangeStream, "acknowledge", lambda self, lsn: None)
                crash.setattr(ChangeStream, "acknowledge_idle", lambda self: None)
            sync_lakehouse(sync, dsn)
        try:
            check(sync, dsn, shape, work, snapshot)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, batch {batch}: {exc}") from exc


FAST = [
    pytest.param(11, Shape("public", "rnd", PLAIN, False), id="default-identity"),
    pytest.param(12, Shape("App", 'Odd "Tab" ü.x', HOSTILE, True), id="full-identity-hostile"),
]


@pytest.mark.parametrize(("seed", "shape"), FAST)
def test_random_workload_mirror_and_history_match_postgres(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, shape: Shape
) -> None:
    run_workload(pg_dsn, tmp_path, monkeypatch, seed=seed, shape=shape, batches=4, per_batch=6)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 108))
def test_random_workload_many_seeds(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    shape = Shape(
        "public" if seed % 2 else "App",
        "rnd" if seed % 2 else 'Odd "Tab" ü.x',
        PLAIN if seed % 2 else HOSTILE,
        identity_full=seed % 3 == 0,
    )
    run_workload(
        pg_dsn,
        tmp_path,
        monkeypatch,
        seed=seed,
        shape=shape,
        batches=10,
        per_batch=10,
        alter_columns=True,
    )
