"""A seeded random workload on a real Delta table (CDF on): appends, updates of values and keys,
deletes, MERGEs, overwrites, multi-file versions, NULL keys, NUL bytes and very long strings.

Every row carries a unique `rid` the workload addresses it by, so operations can change the
key itself. What the synced table must then hold is read back from the Delta table, never
from the workload's own bookkeeping.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.schema import Field, PrimitiveType

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("region", pa.string()),
        ("rid", pa.int64()),
        ("ts", pa.int64()),
        ("label", pa.string()),
        ("amount", pa.float64()),
        ("qty", pa.int32()),
        ("price", pa.decimal128(12, 2)),
        ("flag", pa.bool_()),
        ("seen_at", pa.timestamp("us", tz="UTC")),
        ("born_on", pa.date32()),
        ("tags", pa.list_(pa.string())),
        ("blob", pa.binary()),
    ]
)
# The column `add_column` adds to the source once the workload runs.
ADDED = pa.field("note", pa.string())
# "a\x00p" is stripped to "ap", which no other region is: a NUL byte in a key (and a partition
# value) without two source keys landing on one Postgres key.
REGIONS = ("eu", "us", "a\x00p")
LONG_TEXT = 70_000


@dataclass(frozen=True)
class Shape:
    """What kind of synced table the workload feeds."""

    key: tuple[str, ...] = ("id",)
    partition_by: tuple[str, ...] = ()
    # The table keeps the latest row per key by `ts`: the source holds several rows a key.
    timeseries: bool = False


class DeltaWorkload:
    """Random operations on the Delta table at `path`, drawn from `rng`; each returns a line for
    the operation log."""

    def __init__(self, path: Path, shape: Shape, rng: random.Random, *, scale: int = 1) -> None:
        self.path = path
        # Operations touch up to `scale` times more rows (those written as SQL lists, a hundred
        # times at most).
        self.scale = scale
        self.shape = shape
        self.rng = rng
        self.next_id = 0
        self.next_rid = 0
        self.used_ts: set[int] = set()
        self.gone: list[tuple[Any, ...]] = []  # keys deleted from the source, to re-insert
        self.duplicated_rid: int | None = None
        self.schema = SCHEMA

    @property
    def columns(self) -> tuple[str, ...]:
        """The source's columns now."""
        return tuple(self.schema.names)

    # -- reading the source -------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """The Delta table's current rows, by rid (the order files are read in may vary, the
        workload's choices must not)."""
        rows = DeltaTable(str(self.path)).to_pyarrow_table().to_pylist()
        return sorted(rows, key=lambda row: row["rid"])

    def key_of(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row[k] for k in self.shape.key)

    def _stripped_key(self, row: dict[str, Any]) -> tuple[Any, ...]:
        """The key as Postgres holds it (NUL bytes stripped)."""
        return tuple(v.replace("\x00", "") if isinstance(v, str) else v for v in self.key_of(row))

    def _keys(self, rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        return {self.key_of(r) for r in rows}

    # -- values -------------------------------------------------------------------------------

    def _text(self) -> str | None:
        pick = self.rng.random()
        if pick < 0.1:
            return None
        if pick < 0.18:
            return f"nul\x00{self.rng.randrange(100)}\x00"
        if pick < 0.21:
            return self.rng.choice("xyz") * self.rng.randrange(LONG_TEXT, LONG_TEXT + 100)
        if pick < 0.25:
            return ""
        return "".join(self.rng.choice("abcdé€ \t'\"\\") for _ in range(self.rng.randrange(1, 12)))

    def _ts(self) -> int:
        while True:
            value = self.rng.randrange(1_000_000)
            if value not in self.used_ts:
                self.used_ts.add(value)
                return value

    def _maybe(self, value: Any) -> Any:
        return None if self.rng.random() < 0.1 else value

    def values(self) -> dict[str, Any]:
        """Random values of the non-key columns (not `rid`)."""
        rng = self.rng
        tags: list[str | None] | None = [self._text() for _ in range(rng.randrange(3))]
        return {
            "ts": self._maybe(self._ts()),
            "label": self._text(),
            "amount": self._maybe(rng.choice([rng.uniform(-1e6, 1e6), 0.1, 1e300, 5e-324])),
            "qty": self._maybe(rng.randrange(-(2**31), 2**31)),
            "price": self._maybe(Decimal(rng.randrange(-(10**11), 10**11)) / 100),
            "flag": self._maybe(rng.random() < 0.5),
            "seen_at": self._maybe(
                datetime(1990, 1, 1, tzinfo=UTC)
                + timedelta(microseconds=rng.randrange(2**50 // 1000))
            ),
            "born_on": self._maybe(date(1900, 1, 1) + timedelta(days=rng.randrange(80_000))),
            "tags": self._maybe(tags),
            "blob": self._maybe(rng.randbytes(rng.randrange(6))),
            ADDED.name: self._text(),
        }

    def new_row(self, key: tuple[Any, ...] | None = None) -> dict[str, Any]:
        """A row with a fresh rid, key `key` (default: a new one) and random values."""
        self.next_rid += 1
        row = {"rid": self.next_rid, "region": self.rng.choice(REGIONS), **self.values()}
        if key is None:
            self.next_id += 1
            row["id"] = self.next_id
        else:
            row.update(zip(self.shape.key, key, strict=True))
        return row

    def _table(self, rows: list[dict[str, Any]]) -> pa.Table:
        columns = self.columns
        return pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], self.schema)

    # -- operations ---------------------------------------------------------------------------

    def create(self, count: int) -> str:
        rows = [self.new_row() for _ in range(count)]
        write_deltalake(
            str(self.path),
            self._table(rows),
            partition_by=list(self.shape.partition_by) or None,
            configuration={"delta.enableChangeDataFeed": "true"},
        )
        return f"create {count} rows"

    def step(self) -> str:
        """One random operation (one Delta version, or two for a delete and re-insert)."""
        ops: list[tuple[float, Callable[[], str]]] = [
            (3, self.append),
            (1, self.append_files),
            (3, self.update_values),
            (2, self.update_keys),
            (2, self.delete),
            (2, self.merge),
            (1, self.overwrite),
            (1, self.reinsert),
            (1, self.null_keys),
            (1, self.update_expression),
            (1, self.replace_where),
            (0.5, self.compact),
            (0.3, self.vacuum),
        ]
        if ADDED.name not in self.columns:
            ops.append((0.3, self.add_column))
        if not self.shape.timeseries:
            ops.append((1, self.swap_keys))
        if self.shape.partition_by:
            ops.append((0.5, self.delete_partition))
        if self.shape.timeseries:
            ops.extend([(2, self.append_events), (1, self.append_stale_events)])
        weights, choices = zip(*ops, strict=True)
        return self.rng.choices(choices, weights=weights)[0]()

    def _sample(
        self, rows: list[dict[str, Any]], most: int, *, listed: bool = False
    ) -> list[dict[str, Any]]:
        """Up to `most` (scaled) random rows; `listed`: rows a SQL statement will list."""
        most *= min(self.scale, 100) if listed else self.scale
        return self.rng.sample(rows, min(len(rows), self.rng.randint(1, most)))

    def _rids(self, rows: list[dict[str, Any]]) -> str:
        return ", ".join(str(r["rid"]) for r in rows)

    def append(self) -> str:
        rows = [self.new_row() for _ in range(self.rng.randint(1, 12 * self.scale))]
        write_deltalake(str(self.path), self._table(rows), mode="append")
        return f"append {[self.key_of(r) for r in rows]}"

    def append_files(self) -> str:
        rows = [self.new_row() for _ in range(self.rng.randint(10, 40) * self.scale)]
        data = self._table(rows)
        reader = pa.RecordBatchReader.from_batches(data.schema, data.to_batches(max_chunksize=8))
        write_deltalake(str(self.path), reader, mode="append", target_file_size=100)
        return f"append {len(rows)} rows in several files"

    def append_events(self) -> str:
        """Timeseries only: new rows for existing keys, older or newer than theirs."""
        current = self.rows()
        keys = [self.key_of(r) for r in self._sample(current, 6) if None not in self.key_of(r)]
        rows = [self.new_row(k) for k in keys]
        write_deltalake(str(self.path), self._table(rows), mode="append")
        return f"append events of {keys}"

    def append_stale_events(self) -> str:
        """Timeseries only: two rows for an existing key in one version, sharing a `ts` older
        than the key's latest (or NULL): a tie that never decides the key's row."""
        latest: dict[tuple[Any, ...], int] = {}
        for row in self.rows():
            key = self.key_of(row)
            if None not in key and row["ts"] is not None:
                latest[key] = max(row["ts"], latest.get(key, row["ts"]))
        keys = self.rng.sample(sorted(latest), min(len(latest), self.rng.randint(1, 4)))
        rows = []
        for key in keys:
            stale = self.rng.choice([None, self.rng.randrange(latest[key] + 1)])
            rows += [{**self.new_row(key), "ts": stale} for _ in range(2)]
        write_deltalake(str(self.path), self._table(rows), mode="append")
        return f"append tied older events of {keys}"

    def break_ties(self) -> str | None:
        """Timeseries only: delete all but one of the rows sharing a key's latest `ts` (NULLs
        last), which the source may hold after deletes; None when there are none."""
        by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for row in self.rows():
            if None not in self.key_of(row):
                by_key.setdefault(self._stripped_key(row), []).append(row)
        doomed = []
        for rows in by_key.values():
            top = max(rows, key=_recency)
            tied = [r for r in rows if _recency(r) == _recency(top)]
            doomed += tied[1:]
        if not doomed:
            return None
        DeltaTable(str(self.path)).delete(f"rid IN ({self._rids(doomed)})")
        return f"delete tied latest events {[r['rid'] for r in doomed]}"

    def update_values(self) -> str:
        """A MERGE by rid that rewrites the values of a random subset."""
        chosen = self._sample(self.rows(), 10)
        rows = [{**r, **self.values()} for r in chosen]
        self._merge(rows, deletes=[])
        return f"update values of {[self.key_of(r) for r in chosen]}"

    def update_expression(self) -> str:
        """An UPDATE with SQL expressions (one value changes, others stay)."""
        chosen = self._sample(self.rows(), 10, listed=True)
        DeltaTable(str(self.path)).update(
            updates={"qty": "qty + 1", "label": "concat(label, 'x')"},
            predicate=f"rid IN ({self._rids(chosen)})",
        )
        return f"update qty, label of {[self.key_of(r) for r in chosen]}"

    def _moved_key(self, row: dict[str, Any], taken: set[tuple[Any, ...]]) -> tuple[Any, ...]:
        """A key for `row` no row holds: a new id, or (composite key) another region."""
        if len(self.shape.key) > 1 and self.rng.random() < 0.5:
            for region in REGIONS:
                key = (row["id"], region)
                if key not in taken:
                    return key
        self.next_id += 1
        return (self.next_id, *self.key_of(row)[1:])

    def update_keys(self) -> str:
        """An UPDATE that gives a random subset new keys (a timeseries event moves key)."""
        current = self.rows()
        taken = self._keys(current)
        chosen = self._sample(current, 6, listed=True)
        moves = []
        cases: dict[str, list[str]] = {k: [] for k in self.shape.key}
        for row in chosen:
            key = self._moved_key(row, taken)
            if self.rng.random() < 0.1:
                key = (None, *key[1:])  # the row leaves the synced table
            taken.add(key)
            moves.append((self.key_of(row), key))
            for name, value in zip(self.shape.key, key, strict=True):
                cases[name].append(f"WHEN {row['rid']} THEN {_literal(value)}")
        DeltaTable(str(self.path)).update(
            updates={name: f"CASE rid {' '.join(w)} END" for name, w in cases.items()},
            predicate=f"rid IN ({self._rids(chosen)})",
        )
        self.gone.extend(old for old, _ in moves if not self.shape.timeseries)
        return f"update keys {moves}"

    def swap_keys(self) -> str:
        """One UPDATE that swaps the keys of two rows: each old key stays, with other values."""
        current = [r for r in self.rows() if None not in self.key_of(r)]
        if len(current) < 2:
            return self.append()
        a, b = self.rng.sample(current, 2)
        cases = {
            name: f"CASE rid WHEN {a['rid']} THEN {_literal(b[name])} "
            f"WHEN {b['rid']} THEN {_literal(a[name])} END"
            for name in self.shape.key
        }
        DeltaTable(str(self.path)).update(
            updates=cases, predicate=f"rid IN ({a['rid']}, {b['rid']})"
        )
        return f"swap keys {self.key_of(a)} <-> {self.key_of(b)}"

    def delete(self) -> str:
        chosen = self._sample(self.rows(), 8, listed=True)
        DeltaTable(str(self.path)).delete(f"rid IN ({self._rids(chosen)})")
        self.gone.extend(self.key_of(r) for r in chosen if not self.shape.timeseries)
        return f"delete {[self.key_of(r) for r in chosen]}"

    def delete_partition(self) -> str:
        region = self.rng.choice(REGIONS)
        DeltaTable(str(self.path)).delete(f"region = {_literal(region)}")
        return f"delete partition region={region!r}"

    def reinsert(self) -> str:
        """Keys the source deleted earlier come back (with new values)."""
        taken = self._keys(self.rows())
        candidates = [k for k in dict.fromkeys(self.gone) if k not in taken and None not in k]
        if not candidates:
            return self.append()
        keys = self.rng.sample(candidates, min(len(candidates), self.rng.randint(1, 6)))
        rows = [self.new_row(k) for k in keys]
        write_deltalake(str(self.path), self._table(rows), mode="append")
        return f"re-insert {keys}"

    def null_keys(self) -> str:
        """Rows with a NULL key column (never synced), and sometimes a NULL key given a value."""
        rows = [self.new_row() for _ in range(self.rng.randint(1, 3))]
        for row in rows:
            row[self.rng.choice(self.shape.key)] = None
        write_deltalake(str(self.path), self._table(rows), mode="append")
        return f"append {len(rows)} NULL-key rows"

    def merge(self) -> str:
        """One MERGE that updates (values, sometimes the key), deletes and inserts."""
        current = self.rows()
        taken = self._keys(current)
        chosen = self._sample(current, 12)
        deletes = chosen[: len(chosen) // 3]
        updates = []
        for row in chosen[len(chosen) // 3 :]:
            update = {**row, **self.values()}
            if self.rng.random() < 0.3:
                key = self._moved_key(row, taken)
                taken.add(key)
                update.update(zip(self.shape.key, key, strict=True))
                if not self.shape.timeseries:
                    self.gone.append(self.key_of(row))
            updates.append(update)
        inserts = [self.new_row() for _ in range(self.rng.randint(0, 5))]
        if not self.shape.timeseries:
            # A deleted key inserted again by the same MERGE, with other values.
            inserts += [self.new_row(self.key_of(r)) for r in deletes if self.rng.random() < 0.4]
        self._merge([*updates, *inserts], deletes=deletes)
        if not self.shape.timeseries:
            self.gone.extend(self.key_of(r) for r in deletes)
        return (
            f"merge: update {[self.key_of(r) for r in updates]}, delete "
            f"{[self.key_of(r) for r in deletes]}, insert {[self.key_of(r) for r in inserts]}"
        )

    def _merge(self, rows: list[dict[str, Any]], *, deletes: list[dict[str, Any]]) -> None:
        source = self._table([*rows, *deletes])
        doomed = [False] * len(rows) + [True] * len(deletes)
        source = source.append_column("doomed", pa.array(doomed))
        (
            DeltaTable(str(self.path))
            .merge(source, predicate="t.rid = s.rid", source_alias="s", target_alias="t")
            .when_matched_delete(predicate="s.doomed")
            .when_matched_update_all(except_cols=["doomed"])
            .when_not_matched_insert_all(except_cols=["doomed"])
            .execute()
        )

    def overwrite(self) -> str:
        """A full rewrite: most rows kept, some changed, some dropped, some added."""
        kept = []
        for row in self.rows():
            pick = self.rng.random()
            if pick < 0.1:
                if not self.shape.timeseries:
                    self.gone.append(self.key_of(row))
                continue
            kept.append({**row, **self.values()} if pick < 0.3 else row)
        kept.extend(self.new_row() for _ in range(self.rng.randint(0, 5)))
        self.rng.shuffle(kept)
        write_deltalake(
            str(self.path),
            self._table(kept),
            mode="overwrite",
            partition_by=list(self.shape.partition_by) or None,
        )
        return f"overwrite with {len(kept)} rows"

    def add_column(self) -> str:
        """A new nullable column (NULL in every row so far); later rows may fill it."""
        DeltaTable(str(self.path)).alter.add_columns(
            Field(ADDED.name, PrimitiveType("string"), nullable=True)
        )
        self.schema = self.schema.append(ADDED)
        return f"add column {ADDED.name!r}"

    def replace_where(self) -> str:
        """An overwrite of one region's rows only (`predicate`): kept, changed, dropped, added."""
        region = self.rng.choice(REGIONS)
        rows = []
        for row in self.rows():
            if row["region"] != region:
                continue
            pick = self.rng.random()
            if pick < 0.2:
                if not self.shape.timeseries:
                    self.gone.append(self.key_of(row))
                continue
            rows.append({**row, **self.values()} if pick < 0.4 else row)
        rows += [{**self.new_row(), "region": region} for _ in range(self.rng.randint(0, 4))]
        write_deltalake(
            str(self.path),
            self._table(rows),
            mode="overwrite",
            predicate=f"region = {_literal(region)}",
        )
        return f"overwrite region={region!r} with {len(rows)} rows"

    def compact(self) -> str:
        """File compaction (and a log checkpoint): a version that changes no row."""
        table = DeltaTable(str(self.path))
        table.optimize.compact()
        DeltaTable(str(self.path)).create_checkpoint()
        return "compact"

    def vacuum(self) -> str:
        """Compaction, then a vacuum that deletes every file the current version does not use:
        the change data of versions not synced yet can no longer be read."""
        DeltaTable(str(self.path)).optimize.compact()
        DeltaTable(str(self.path)).vacuum(
            retention_hours=0, enforce_retention_duration=False, dry_run=False
        )
        return "compact and vacuum"

    # -- duplicate keys (a user error with a defined outcome) ---------------------------------

    def duplicate(self) -> str:
        """Append two rows of one new key in one version."""
        key = self.new_row()
        twin = self.new_row(self.key_of(key))
        self.duplicated_rid = twin["rid"]
        write_deltalake(str(self.path), self._table([key, twin]), mode="append")
        return f"append duplicate key {self.key_of(key)}"

    def fix_duplicate(self) -> str:
        """Delete the second row of the duplicated key."""
        assert self.duplicated_rid is not None
        DeltaTable(str(self.path)).delete(f"rid = {self.duplicated_rid}")
        self.duplicated_rid = None
        return "delete the duplicate row"


def _recency(row: dict[str, Any]) -> tuple[bool, int]:
    """How a row ranks among its key's (by `ts`, NULLs last)."""
    return (row["ts"] is not None, row["ts"] or 0)


def _literal(value: Any) -> str:
    """A SQL literal of a key value (an integer or a string, perhaps with a NUL byte)."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        if "\x00" in value:
            return " || ".join(
                "chr(0)" if part == "" else "'" + part + "'" for part in _split_nul(value)
            )
        return "'" + value.replace("'", "''") + "'"
    return str(int(value))


def _split_nul(value: str) -> list[str]:
    """`value` as its NUL-free parts with "" standing for each NUL byte between them."""
    parts: list[str] = []
    for i, piece in enumerate(value.split("\x00")):
        if i:
            parts.append("")
        if piece:
            parts.append(piece)
    return parts
