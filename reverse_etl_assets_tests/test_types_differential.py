"""Randomized differential tests of column types, edge values and schema evolution, Delta ->
Postgres: every Postgres row and column is compared with the Delta table after each sync, and
`verify` must agree (and must name the key of a tampered value of each type).

The campaign itself (generators, the documented mapping) is in `types_campaign`.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, Field
from psycopg import sql

from reverse_etl_assets.delta import change_feed
from reverse_etl_assets.delta.cdf_columns import CHANGE_TYPE, COMMIT_VERSION
from reverse_etl_assets.errors import DataError, SpecError
from reverse_etl_assets.pipelines.delta_to_postgres.follow import follow_table
from reverse_etl_assets.pipelines.delta_to_postgres.incremental import SchemaChangeError
from reverse_etl_assets.pipelines.delta_to_postgres.result import SyncResult
from reverse_etl_assets.pipelines.delta_to_postgres.run import sync_table
from reverse_etl_assets.pipelines.delta_to_postgres.verify import verify_table
from reverse_etl_assets.postgres.protection import allow_pipeline_writes
from reverse_etl_assets.postgres.state import read_state
from reverse_etl_assets.spec import SyncedTable
from reverse_etl_assets_tests.helpers import one_table
from reverse_etl_assets_tests.types_campaign import (
    KEY_SHAPES,
    delta_rows,
    expected_value,
    kinds,
    postgres_rows,
    strip_nul,
    value_equal,
    write,
)

SCHEMA, TABLE = "gold", "items_synced"
# A value of each kind of column that can hold a NUL byte, holding one (in a JSON key too).
NUL_HOLDERS: dict[str, Any] = {
    "string": "a\x00b",
    "array_string": ["ok", "\x00"],
    "map_string_float": [("k\x00", 1.0)],
    "map_int_string": [(1, "v\x00")],
    "struct": {"s": "\x00", "n": {"x": 1, "y": "y"}},
    "array_struct": [{"x": 1, "y": "\x00"}],
}
CDF = {"delta.enableChangeDataFeed": "true"}

# Partition columns: a type and the few values its rows take (partition values are paths).
PARTITIONS: dict[str, tuple[pa.DataType, list[Any]]] = {
    "string": (pa.string(), ["eu", "é €", "", None, "a/b", "a=b", "%", " x "]),
    "date": (pa.date32(), [date(1, 1, 1), date(9999, 12, 31), date(2000, 1, 1), None]),
    "long": (pa.int64(), [0, -1, 2**63 - 1, -(2**63), None]),
    "short": (pa.int16(), [0, -32768, 32767, None]),
    "bool": (pa.bool_(), [True, False, None]),
    "timestamp": (
        pa.timestamp("us", tz="UTC"),
        [datetime(1, 1, 1, tzinfo=UTC), datetime(2000, 1, 1, 0, 0, 0, 1, tzinfo=UTC), None],
    ),
    "timestamp_ntz": (
        pa.timestamp("us"),
        [datetime(9999, 12, 31, 23, 59, 59, 999999), datetime(1970, 1, 1), None],
    ),
    "decimal": (
        pa.decimal128(10, 2),
        [Decimal("1.50"), Decimal("0.00"), Decimal("12345678.90"), None],
    ),
}


class Campaign:
    """One seeded run over one source: random typed columns, a key shape, a partition column,
    random operations, and a full comparison after each sync."""

    def __init__(
        self,
        tmp_path: Path,
        dsn: str,
        *,
        seed: int,
        mode: str,
        key_shape: str,
        columns: int = 10,
        partition: str | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.dsn = dsn
        self.path = tmp_path / "src"
        self.policy = self.rng.choice(["strip", "fail"])
        self.kinds = kinds(nul=self.policy == "strip")
        names = sorted(self.kinds)
        chosen = self.rng.sample(names, min(columns, len(names)))
        self.later = [n for n in names if n not in chosen]  # added by schema evolution
        self.key_fields, self.key_gen = KEY_SHAPES[key_shape]
        fields = [pa.field(name, t) for name, t in self.key_fields]
        fields += [pa.field("rid", pa.int64())]
        fields += [pa.field(f"c_{name}", self.kinds[name].type) for name in chosen]
        self.partition = "p" if partition else None
        if partition:
            fields.append(pa.field("p", PARTITIONS[partition][0]))
            self.partition_values = PARTITIONS[partition][1]
        self.schema = pa.schema(fields)
        self.next = 0
        self.log: list[str] = []
        entry: dict[str, Any] = {
            "source": str(self.path),
            "primary_key": [name for name, _ in self.key_fields],
            "mode": mode,
            "on_invalid_characters": self.policy,
        }
        if mode == "continuous":
            entry["poll_interval_seconds"] = 0.1
        self.forced = one_table(tmp_path, **entry, full_refresh_threshold=1.0)
        self.by_cost = one_table(tmp_path, **entry)
        self.paths: list[str] = []

    # -- rows ------------------------------------------------------------------------------------

    def _value(self, name: str) -> Any:
        kind = self.kinds[name.removeprefix("c_")]
        return None if self.rng.random() < 0.12 else kind.gen(self.rng)

    def new_row(self) -> dict[str, Any]:
        self.next += 1
        row: dict[str, Any] = dict(
            zip([n for n, _ in self.key_fields], self.key_gen(self.rng, self.next), strict=True)
        )
        row["rid"] = self.next
        for name in self.schema.names:
            if name.startswith("c_"):
                row[name] = self._value(name)
        if self.partition:
            row["p"] = self.rng.choice(self.partition_values)
        return row

    def table(self, rows: list[dict[str, Any]]) -> pa.Table:
        return pa.Table.from_pylist(
            [{c: r.get(c) for c in self.schema.names} for r in rows], self.schema
        )

    def rows(self) -> list[dict[str, Any]]:
        return sorted(delta_rows(self.path)[1], key=lambda r: r["rid"])

    # -- operations ------------------------------------------------------------------------------

    def create(self, count: int) -> None:
        write(
            self.path,
            self.table([self.new_row() for _ in range(count)]),
            partition_by=[self.partition] if self.partition else None,
            configuration={"delta.enableChangeDataFeed": "true"},
        )
        self.log.append(f"create {count} rows, schema {self.schema}")

    def append(self) -> str:
        rows = [self.new_row() for _ in range(self.rng.randint(1, 8))]
        write(self.path, self.table(rows), mode="append")
        return f"append rids {[r['rid'] for r in rows]}"

    def _merge_rows(self, rows: list[dict[str, Any]], *, insert: bool) -> None:
        merger = (
            DeltaTable(str(self.path))
            .merge(self.table(rows), predicate="t.rid = s.rid", source_alias="s", target_alias="t")
            .when_matched_update_all()
        )
        if insert:
            merger = merger.when_not_matched_insert_all()
        merger.execute()

    def update_values(self) -> str:
        picked = self._some_rows(most=5)
        if not picked:
            return self.append()
        for row in picked:
            for name in self.rng.sample(self.schema.names, 3):
                if name.startswith("c_"):
                    row[name] = self._value(name)
        self._merge_rows(picked, insert=False)
        return f"update values of rids {[r['rid'] for r in picked]}"

    def _some_rows(self, *, most: int, least: int = 1) -> list[dict[str, Any]]:
        """Between `least` and `most` of the current rows, at random (none when there are none)."""
        current = self.rows()
        if not current:
            return []
        return self.rng.sample(current, min(len(current), self.rng.randint(least, most)))

    def update_keys(self) -> str:
        picked = self._some_rows(most=3)
        if not picked:
            return self.append()
        for row in picked:
            self.next += 1
            row.update(
                zip([n for n, _ in self.key_fields], self.key_gen(self.rng, self.next), strict=True)
            )
        self._merge_rows(picked, insert=False)
        return f"update keys of rids {[r['rid'] for r in picked]}"

    def delete(self) -> str:
        picked = self._some_rows(most=4)
        if not picked:
            return self.append()
        rids = ", ".join(str(r["rid"]) for r in picked)
        DeltaTable(str(self.path)).delete(f"rid IN ({rids})")
        return f"delete rids {rids}"

    def merge(self) -> str:
        picked = self._some_rows(most=3, least=0)
        for row in picked:
            for name in self.schema.names:
                if name.startswith("c_") and self.rng.random() < 0.5:
                    row[name] = self._value(name)
        fresh = [self.new_row() for _ in range(self.rng.randint(0, 3))]
        self._merge_rows(picked + fresh, insert=True)
        return f"merge rids {[r['rid'] for r in picked + fresh]}"

    def overwrite(self) -> str:
        current = self.rows()
        kept = [r for r in current if self.rng.random() < 0.7]
        rows = kept + [self.new_row() for _ in range(self.rng.randint(0, 4))]
        write(self.path, self.table(rows), mode="overwrite")
        return f"overwrite with rids {[r['rid'] for r in rows]}"

    def add_column(self) -> str:
        if not self.later:
            return self.append()
        name = self.later.pop(self.rng.randrange(len(self.later)))
        field = pa.field(f"c_{name}", self.kinds[name].type)
        self.schema = self.schema.append(field)
        if self.rng.random() < 0.5:
            rows = [self.new_row() for _ in range(self.rng.randint(1, 4))]
            write(self.path, self.table(rows), mode="append", schema_mode="merge")
            return f"add column {field} by an append with schema_mode=merge"
        DeltaTable(str(self.path)).alter.add_columns([Field.from_arrow(field)])
        return f"add column {field} with alter.add_columns"

    def step(self) -> str:
        ops = [
            (3, self.append),
            (3, self.update_values),
            (2, self.update_keys),
            (2, self.delete),
            (2, self.merge),
            (0.5, self.overwrite),
            (1, self.add_column),
        ]
        weights, choices = zip(*ops, strict=True)
        return self.rng.choices(choices, weights=weights)[0]()

    # -- checks ----------------------------------------------------------------------------------

    def fail(self, problem: str, details: list[str]) -> None:
        pytest.fail(
            f"seed {self.seed} ({self.policy}): {problem}\n"
            + "\n".join(d[:600] for d in details[:20])
            + "\noperations:\n  "
            + "\n  ".join(line[:300] for line in self.log[-30:]),
            pytrace=False,
        )

    def sync(self, table: SyncedTable) -> None:
        if table.mode == "continuous":
            # The follower lands what waits, then is stopped (it polls every 0.1 s).
            landed: list[SyncResult] = []
            summary = follow_table(table, self.dsn, max_seconds=0.6, on_sync=landed.append)
            self.log.append(f"follow -> {[r.path for r in landed]} {summary}")
            self.paths += [r.path for r in landed]
        else:
            result = sync_table(table, self.dsn)
            self.paths.append(result.path)
            self.log.append(f"sync -> {result.path} v{result.version} {result.reason}")
        self.check()

    def check(self) -> None:
        schema, rows = delta_rows(self.path)
        key = [n for n, _ in self.key_fields]
        strip = self.policy == "strip"
        want: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in rows:
            k = tuple(strip_nul(row[n]) if strip else row[n] for n in key)
            values = {f.name: expected_value(row[f.name], f.type) for f in schema}
            want[k] = strip_nul(values) if strip else values
        names, got_rows = postgres_rows(self.dsn, SCHEMA, TABLE)
        if sorted(names) != sorted(schema.names):  # delta-rs reads partition columns last
            self.fail("the columns differ", [f"Delta {schema.names}", f"Postgres {names}"])
        got = {
            tuple(r[names.index(n)] for n in key): dict(zip(names, r, strict=True))
            for r in got_rows
        }
        problems = []
        for k in want.keys() - got.keys():
            problems.append(f"missing in Postgres: {k!r}")
        for k in got.keys() - want.keys():
            problems.append(f"extra in Postgres: {k!r}")
        for k in want.keys() & got.keys():
            for f in schema:
                if not value_equal(want[k][f.name], got[k][f.name], f.type):
                    delta, postgres = want[k][f.name], got[k][f.name]
                    problems.append(
                        f"{k!r} {f.name} ({f.type}): Delta {delta!r} Postgres {postgres!r}"
                    )
        if problems:
            self.fail(f"Postgres differs from Delta ({len(problems)})", problems)
        verified = verify_table(self.forced, self.dsn)
        if not (verified.content_matches and verified.rows_match):
            self.fail(
                "verify says the tables differ while every value matches", [verified.describe()]
            )

    def run(self, *, rows: int, syncs: int) -> None:
        self.create(rows)
        self.sync(self.forced)
        for _ in range(syncs):
            for _ in range(self.rng.randint(1, 3)):
                self.log.append(self.step())
            if self.policy == "fail" and self.rng.random() < 0.3:
                self.refuse_nul()
            self.sync(self.forced if self.rng.random() < 0.7 else self.by_cost)

    def refuse_nul(self) -> None:
        """`on_invalid_characters: fail`: a row whose text (or JSON text) holds a NUL byte fails
        the sync naming the column, Postgres and the checkpoint stay; once the row is gone the
        next sync lands the source."""
        holders = [n for n in self.schema.names if n.removeprefix("c_") in NUL_HOLDERS]
        if not holders:
            return
        column = self.rng.choice(holders)
        row = self.new_row()
        row[column] = NUL_HOLDERS[column.removeprefix("c_")]
        write(self.path, self.table([row]), mode="append")
        self.log.append(f"append rid {row['rid']} with a NUL byte in {column}")
        before = everything(self.dsn)
        with psycopg.connect(self.dsn) as conn:
            version = read_state(conn, self.forced.name)
        try:
            sync_table(self.forced if self.rng.random() < 0.7 else self.by_cost, self.dsn)
        except DataError as exc:
            if f"column {column!r} holds a NUL byte" not in str(exc):
                self.fail("the wrong error for a NUL byte", [str(exc)])
        else:
            self.fail(f"a NUL byte in {column} was synced under `fail`", [])
        if everything(self.dsn) != before:
            self.fail("a refused sync changed Postgres", [])
        with psycopg.connect(self.dsn) as conn:
            after = read_state(conn, self.forced.name)
        assert version is not None and after is not None
        if after.last_synced_version != version.last_synced_version:
            self.fail("a refused sync moved the checkpoint", [])
        DeltaTable(str(self.path)).delete(f"rid = {row['rid']}")
        self.log.append(f"delete rid {row['rid']}")

    # -- tampering -------------------------------------------------------------------------------

    def tamper_each_column(self, most: int | None = None) -> None:
        """Change one value of each column (or of `most` random ones) in Postgres: verify must
        name that key as changed."""
        key = [n for n, _ in self.key_fields]
        names, got_rows = postgres_rows(self.dsn, SCHEMA, TABLE)
        if not got_rows:
            return
        target = sql.Identifier(SCHEMA, TABLE)
        with psycopg.connect(self.dsn) as conn:
            types = dict(
                conn.execute(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = %s::regclass AND attnum > 0",
                    (f"{SCHEMA}.{TABLE}",),
                ).fetchall()
            )
        fields = [f for f in self.schema if f.name not in key]
        for field in self.rng.sample(fields, min(len(fields), most or len(fields))):
            row = self.rng.choice(got_rows)
            where = sql.SQL(" AND ").join(
                sql.SQL("{} = {}").format(sql.Identifier(n), sql.Literal(row[names.index(n)]))
                for n in key
            )
            bak_where = sql.SQL(" AND ").join(
                sql.SQL("{} = b.{}").format(sql.Identifier(SCHEMA, TABLE, n), sql.Identifier(n))
                for n in key
            )
            for change in tamperings(field):
                with psycopg.connect(self.dsn) as conn:
                    allow_pipeline_writes(conn)
                    conn.execute(
                        sql.SQL("CREATE TABLE public.bak AS SELECT * FROM {} WHERE {}").format(
                            target, where
                        )
                    )
                    changed = conn.execute(
                        sql.SQL(
                            "UPDATE {t} SET {c} = {v} WHERE {w} AND {c} IS DISTINCT FROM {v}"
                        ).format(
                            t=target,
                            c=sql.Identifier(field.name),
                            v=sql.SQL("({})::{}").format(
                                sql.SQL(change), sql.SQL(types[field.name])
                            ),
                            w=where,
                        )
                    ).rowcount
                try:
                    if not changed:
                        continue
                    verified = verify_table(self.forced, self.dsn)
                    wanted = {n: row[names.index(n)] for n in key}
                    if verified.content_matches or wanted not in [
                        d.key for d in verified.differences
                    ]:
                        self.fail(
                            f"verify missed {field.name} ({field.type}) of {wanted}: {change}",
                            [verified.describe()],
                        )
                finally:
                    with psycopg.connect(self.dsn) as conn:
                        allow_pipeline_writes(conn)
                        conn.execute(
                            sql.SQL(
                                "UPDATE {t} SET {c} = b.{c} FROM public.bak b WHERE {w}"
                            ).format(t=target, c=sql.Identifier(field.name), w=bak_where)
                        )
                        conn.execute("DROP TABLE public.bak")
        if not verify_table(self.forced, self.dsn).content_matches:
            self.fail("verify differs after the tampering was undone", [])


def everything(dsn: str) -> list[str]:
    """Every Postgres row, comparable (NaN is not equal to itself)."""
    return sorted(repr(row) for row in postgres_rows(dsn, SCHEMA, TABLE)[1])


def tamperings(field: pa.Field) -> list[str]:
    """SQL expressions (of the column's current value `c`) that give another value."""
    c = f'"{field.name}"'
    t = field.type
    out = [f"CASE WHEN {c} IS NULL THEN {_literal(t)} END"]  # to NULL, or from NULL
    if pa.types.is_boolean(t):
        out.append(f"NOT {c}")
    elif pa.types.is_integer(t):
        out.append(f"CASE WHEN {c} > 0 THEN {c} - 1 ELSE {c} + 1 END")
    elif pa.types.is_floating(t):
        out.append(f"CASE WHEN {c} = 1.25 THEN 2.5 ELSE 1.25 END")
        out.append(f"CASE WHEN {c} = 'NaN' THEN 'Infinity' ELSE 'NaN' END")
    elif pa.types.is_decimal(t):
        out.append(f"CASE WHEN {c} <> 0 THEN -{c} ELSE {_literal(t)} END")  # the sign only
        unit = f"1e-{t.scale}"
        out.append(f"CASE WHEN {c} > 0 THEN {c} - {unit} ELSE {c} + {unit} END")
    elif pa.types.is_string(t):
        out.append(f"{c} || ' '")
    elif pa.types.is_binary(t):
        out.append(f"{c} || '\\x00'::bytea")
    elif pa.types.is_date(t):
        out.append(f"CASE WHEN {c} > '2000-01-01' THEN {c} - 1 ELSE {c} + 1 END")
    elif pa.types.is_timestamp(t):
        out.append(
            f"CASE WHEN {c} > '2000-01-01' THEN {c} - interval '1 microsecond' "
            f"ELSE {c} + interval '1 microsecond' END"
        )
    else:
        out.append(f"CASE WHEN {c}::text = '[]' THEN '[null]' ELSE '[]' END::jsonb")
        out.append(f"CASE WHEN {c}::text = '[0]' THEN '[1]' ELSE '[0]' END::jsonb")
    return out


def _literal(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "true"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "1"
    if pa.types.is_decimal(t):
        return "0" if t.precision == t.scale else "1"
    if pa.types.is_string(t):
        return "'x'"
    if pa.types.is_binary(t):
        return "'\\x01'::bytea"
    if pa.types.is_date(t):
        return "'2000-01-01'::date"
    if pa.types.is_timestamp(t):
        return "'2000-01-01 00:00:00+00'"
    return "'{}'::jsonb"


def _kind_names() -> list[str]:
    return sorted(kinds(nul=False))


@pytest.fixture
def icu_dsn(pg_server_dsn: str) -> Iterator[str]:
    """A database whose default collation is linguistic (en-US), as most servers' are."""
    name = f"test_icu_{uuid.uuid4().hex[:12]}"
    create = (
        "CREATE DATABASE {} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'"
    )
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(create).format(sql.Identifier(name)))
    try:
        yield pg_server_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


# (seed, mode, key shape, partition column type): the default tier runs the first three, the slow
# tier the rest, and more seeds below.
SHAPES = [
    (2, "triggered", "string", "string"),
    (3, "snapshot", "composite", "date"),
    (5, "triggered", "date", "bool"),
    (1, "triggered", "long", None),
    (4, "triggered", "decimal", "long"),
    (6, "triggered", "int", "short"),
    (7, "snapshot", "string", "timestamp"),
    (8, "triggered", "long", "timestamp_ntz"),
    (9, "triggered", "string", "decimal"),
    (10, "snapshot", "long", None),
    (11, "continuous", "composite", "string"),
    (12, "continuous", "decimal", None),
    (14, "triggered", "timestamp", "string"),
    (15, "triggered", "binary", "timestamp"),
    (16, "triggered", "int", "date"),
]


@pytest.mark.parametrize(
    ("seed", "mode", "key_shape", "partition"),
    [*SHAPES[:3], *(pytest.param(*shape, marks=pytest.mark.slow) for shape in SHAPES[3:])],
)
def test_random_types_sync_exactly(
    tmp_path: Path, pg_dsn: str, seed: int, mode: str, key_shape: str, partition: str | None
) -> None:
    campaign = Campaign(
        tmp_path, pg_dsn, seed=seed, mode=mode, key_shape=key_shape, partition=partition
    )
    campaign.run(rows=10, syncs=3)
    campaign.tamper_each_column(most=3)


def test_random_types_sync_exactly_on_a_linguistic_collation(tmp_path: Path, icu_dsn: str) -> None:
    campaign = Campaign(tmp_path, icu_dsn, seed=13, mode="triggered", key_shape="string")
    campaign.run(rows=10, syncs=3)


# More seeds run in a campaign of their own (`-m slow -k many_seeds` with a wider range): the
# suite keeps two, within its time budget.
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 102))
def test_random_types_sync_exactly_many_seeds(tmp_path: Path, pg_dsn: str, seed: int) -> None:
    rng = random.Random(seed)
    campaign = Campaign(
        tmp_path,
        pg_dsn,
        seed=seed,
        mode=rng.choice(["triggered", "triggered", "snapshot", "continuous"]),
        key_shape=rng.choice(sorted(KEY_SHAPES)),
        partition=rng.choice([None, *sorted(PARTITIONS)]),
        columns=rng.randint(4, 26),
    )
    campaign.run(rows=rng.randint(1, 30), syncs=10)
    campaign.tamper_each_column(most=8)


# -- regressions found by the campaign ---------------------------------------------------------


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_unicode_line_separators_in_values_do_not_break_the_delta_log(
    tmp_path: Path, pg_dsn: str, separator: str
) -> None:
    # delta-rs writes a string column's min/max statistics into the commit's JSON lines with
    # these characters unescaped (JSON allows them); only "\n" ends a line of the log.
    def rows(ids: range) -> pa.Table:
        return pa.table({"id": pa.array(ids, pa.int64()), "v": [f"a{separator}{i}" for i in ids]})

    write(tmp_path / "src", rows(range(2)), configuration={"delta.enableChangeDataFeed": "true"})
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"], mode="triggered")
    sync_table(table, pg_dsn)
    write(tmp_path / "src", rows(range(2, 4)), mode="append")
    assert sync_table(table, pg_dsn).path == "incremental"
    _, got = postgres_rows(pg_dsn, SCHEMA, TABLE)
    assert sorted(got) == [(i, f"a{separator}{i}") for i in range(4)]


def test_a_field_added_to_a_struct_reshapes_every_rows_json(tmp_path: Path, pg_dsn: str) -> None:
    # A STRUCT is a JSON object with every field (README "Types"): once the source's struct
    # gains a field, the rows an increment does not touch must show it too (as null).
    def rows(ids: list[int], fields: list[str]) -> pa.Table:
        struct = pa.struct([(f, pa.int64()) for f in fields])
        values = [{f: i for f in fields} for i in ids]
        return pa.table({"id": pa.array(ids, pa.int64()), "s": pa.array(values, struct)})

    write(tmp_path / "src", rows([1], ["a"]), configuration={"delta.enableChangeDataFeed": "true"})
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"], mode="triggered")
    sync_table(table, pg_dsn)
    write(tmp_path / "src", rows([2], ["a", "b"]), mode="append", schema_mode="merge")
    result = sync_table(table, pg_dsn)
    _, got = postgres_rows(pg_dsn, SCHEMA, TABLE)
    assert sorted(got) == [(1, {"a": 1, "b": None}), (2, {"a": 2, "b": 2})]
    assert "column 's'" in result.reason
    assert verify_table(table, pg_dsn).content_matches


@pytest.mark.parametrize(
    "values",
    [
        pa.array([True, False, False, True]),
        pa.array([b"\x01", b"\x02", b"\x02", b"\x01"]),
        pa.array([{"a": 1}, {"a": 2}, {"a": 2}, {"a": 1}]),
    ],
    ids=["boolean", "binary", "struct"],
)
def test_a_timeseries_key_that_has_no_latest_is_refused_by_name(
    tmp_path: Path, pg_dsn: str, values: pa.Array
) -> None:
    # Postgres has no max() of boolean, bytea or jsonb: the first increment failed with a raw
    # "function max(boolean) does not exist" after a snapshot had landed.
    ids = pa.array([1, 1, 2, 2], pa.int64())
    write(tmp_path / "src", pa.table({"id": ids, "t": values}), configuration=CDF)
    table = one_table(
        tmp_path, source=str(tmp_path / "src"), primary_key=["id"], timeseries_key="t"
    )
    with pytest.raises(SpecError, match=r"'lakebase.gold.items_synced': `timeseries_key` 't' is"):
        sync_table(table, pg_dsn)


def test_verify_takes_a_nan_timeseries_key_as_the_latest_as_the_sync_does(
    tmp_path: Path, pg_dsn: str
) -> None:
    # Postgres orders NaN above every number, so the sync keeps a key's NaN row; verify's own
    # pick of the latest row per key must agree (it ignored NaN, and reported a difference).
    ids = pa.array([1, 1, 2, 2, 3], pa.int64())
    times = pa.array([math.nan, 5.0, None, 1.0, math.nan])
    write(
        tmp_path / "src", pa.table({"id": ids, "t": times, "v": list("abcde")}), configuration=CDF
    )
    table = one_table(
        tmp_path, source=str(tmp_path / "src"), primary_key=["id"], timeseries_key="t"
    )
    sync_table(table, pg_dsn)
    _, got = postgres_rows(pg_dsn, SCHEMA, TABLE)
    assert sorted(r[2] for r in got) == ["a", "d", "e"]
    assert verify_table(table, pg_dsn).content_matches


def test_a_string_timeseries_key_orders_by_bytes_whatever_the_database_collation(
    tmp_path: Path, icu_dsn: str
) -> None:
    # en-US sorts "a" before "B"; bytes (and Delta, and verify) sort "B" (0x42) before "a".
    # The latest row per key must not depend on the target database's locale.
    def rows(ids: list[int], times: list[str]) -> pa.Table:
        return pa.table({"id": pa.array(ids, pa.int64()), "t": times, "v": [t * 2 for t in times]})

    write(tmp_path / "src", rows([1, 1, 2], ["a", "B", "B"]), configuration=CDF)
    table = one_table(
        tmp_path, source=str(tmp_path / "src"), primary_key=["id"], timeseries_key="t",
        mode="triggered", full_refresh_threshold=1.0,
    )  # fmt: skip
    sync_table(table, icu_dsn)  # the snapshot ranks the rows of key 1
    assert verify_table(table, icu_dsn).content_matches
    write(tmp_path / "src", rows([2, 3, 3], ["a", "a", "B"]), mode="append")
    assert sync_table(table, icu_dsn).path == "incremental"  # an appended row, new rows ranked
    DeltaTable(str(tmp_path / "src")).delete("id = 2 AND t = 'a'")
    write(tmp_path / "src", rows([2], ["b"]), mode="append")
    assert sync_table(table, icu_dsn).path == "incremental"  # the remaining rows of key 2
    _, got = postgres_rows(icu_dsn, SCHEMA, TABLE)
    assert sorted(got) == [(1, "a", "aa"), (2, "b", "bb"), (3, "a", "aa")]
    assert verify_table(table, icu_dsn).content_matches


def test_an_empty_string_partition_value_is_null_in_increments_as_in_the_table(
    tmp_path: Path, pg_dsn: str
) -> None:
    # delta-rs logs a "" partition value as "" but reads the table's row as NULL (the Delta
    # convention): the change feed must land NULL too, as a snapshot does.
    def rows(ids: list[int], parts: list[str | None]) -> pa.Table:
        return pa.table({"id": pa.array(ids, pa.int64()), "p": pa.array(parts, pa.string())})

    write(tmp_path / "src", rows([1, 2], ["", "x"]), partition_by=["p"], configuration=CDF)
    table = one_table(
        tmp_path, source=str(tmp_path / "src"), primary_key=["id"], mode="triggered",
        full_refresh_threshold=1.0,
    )  # fmt: skip
    sync_table(table, pg_dsn)
    write(tmp_path / "src", rows([3, 4], ["", None]), mode="append")
    assert sync_table(table, pg_dsn).path == "incremental"
    _, got = postgres_rows(pg_dsn, SCHEMA, TABLE)
    assert sorted(got) == [(1, None), (2, "x"), (3, None), (4, None)]
    assert sorted(got) == sorted((r["id"], r["p"]) for r in delta_rows(tmp_path / "src")[1])
    assert verify_table(table, pg_dsn).content_matches


def test_an_empty_string_partition_value_is_null_in_delta_rs_s_own_feed_too(
    tmp_path: Path,
) -> None:
    # The feed delta-rs reads (column mapping, deletion vectors) gives "" as it is.
    data = pa.table({"id": pa.array([1, 2], pa.int64()), "p": pa.array(["", "x"])})
    write(tmp_path / "src", data, partition_by=["p"], configuration=CDF)
    source = DeltaTable(str(tmp_path / "src"))
    schema = pa.schema(source.schema().to_arrow())
    names = [*schema.names, CHANGE_TYPE, COMMIT_VERSION]
    batches = change_feed._engine_changes(source, start=0, end=0, schema=schema, names=names)
    rows = pa.Table.from_batches(list(batches)).select(["id", "p"]).to_pylist()
    assert sorted(rows, key=lambda r: r["id"]) == [{"id": 1, "p": None}, {"id": 2, "p": "x"}]


def test_a_field_dropped_from_a_struct_fails_like_a_retyped_column(
    tmp_path: Path, pg_dsn: str
) -> None:
    # Only added columns (and, inside a nested column, added fields) are followed; Postgres
    # keeps serving the last synced version.
    struct = pa.struct([("a", pa.int64()), ("b", pa.int64())])
    rows = pa.table(
        {"id": pa.array([1], pa.int64()), "s": pa.array([[{"a": 1, "b": 2}]], pa.list_(struct))}
    )
    write(tmp_path / "src", rows, configuration=CDF)
    table = one_table(tmp_path, source=str(tmp_path / "src"), primary_key=["id"], mode="triggered")
    sync_table(table, pg_dsn)
    fewer = pa.table(
        {
            "id": pa.array([1], pa.int64()),
            "s": pa.array([[{"a": 3}]], pa.list_(pa.struct([("a", pa.int64())]))),
        }
    )
    write(tmp_path / "src", fewer, mode="overwrite", schema_mode="overwrite")
    with pytest.raises(SchemaChangeError, match=r"column 's' changed type .* --full-refresh"):
        sync_table(table, pg_dsn)
    assert postgres_rows(pg_dsn, SCHEMA, TABLE)[1] == [(1, [{"a": 1, "b": 2}])]
