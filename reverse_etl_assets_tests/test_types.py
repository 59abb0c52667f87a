"""The type map (DDL and wire encoding from one table) and JSON encoding of nested values.

Pure Arrow; the round trip through Postgres is in test_snapshot.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest

from reverse_etl_assets.errors import SpecError
from reverse_etl_assets.schema.delta_to_postgres import json_text, pg_columns, to_wire


def ddl_of(t: pa.DataType) -> str:
    return pg_columns(pa.schema([pa.field("c", t)]), table="x")[0].ddl


@pytest.mark.parametrize(
    ("arrow", "pg"),
    [
        (pa.int64(), "bigint"),
        (pa.int32(), "integer"),
        (pa.int16(), "smallint"),
        (pa.int8(), "smallint"),
        (pa.bool_(), "boolean"),
        (pa.float32(), "real"),
        (pa.float64(), "double precision"),
        (pa.decimal128(38, 18), "numeric(38,18)"),
        (pa.decimal128(10, 2), "numeric(10,2)"),
        (pa.string(), "text"),
        (pa.large_string(), "text"),
        (pa.binary(), "bytea"),
        (pa.date32(), "date"),
        (pa.timestamp("us", tz="UTC"), "timestamptz"),
        (pa.timestamp("us"), "timestamp"),
        (pa.duration("us"), "interval"),
        (pa.list_(pa.int64()), "jsonb"),
        (pa.map_(pa.string(), pa.int64()), "jsonb"),
        (pa.struct([("a", pa.int64())]), "jsonb"),
    ],
)
def test_delta_types_map_to_postgres(arrow: pa.DataType, pg: str) -> None:
    assert ddl_of(arrow) == pg


@pytest.mark.parametrize("arrow", [pa.uint64(), pa.null(), pa.decimal256(50, 2)])
def test_unsupported_types_are_refused_by_name(arrow: pa.DataType) -> None:
    with pytest.raises(SpecError, match="column 'c' has type"):
        ddl_of(arrow)


def test_json_shapes() -> None:
    lists = pa.array([[1, None, 3], [], None], pa.list_(pa.int64()))
    maps = pa.array([[("k", 1), ("j", None)], [], None], pa.map_(pa.string(), pa.int64()))
    structs = pa.array(
        [{"a": 1, "b": None}, None, {"a": None, "b": "x"}],
        pa.struct([("a", pa.int64()), ("b", pa.string())]),
    )
    assert json_text(lists).to_pylist() == ["[1,null,3]", "[]", None]
    assert [None if v is None else json.loads(v) for v in json_text(maps).to_pylist()] == [
        {"k": 1, "j": None},
        {},
        None,
    ]
    assert [None if v is None else json.loads(v) for v in json_text(structs).to_pylist()] == [
        {"a": 1, "b": None},
        None,
        {"a": None, "b": "x"},
    ]


def test_json_binary_nan_and_slices() -> None:
    structs = pa.array(
        [{"b": b"\x00ab", "f": math.nan}, {"b": None, "f": 1.5}, {"b": b"", "f": math.inf}],
        pa.struct([("b", pa.binary()), ("f", pa.float64())]),
    )
    decoded = [json.loads(v) for v in json_text(structs).to_pylist()]
    assert decoded == [{"b": "AGFi", "f": None}, {"b": None, "f": 1.5}, {"b": "", "f": None}]
    sliced = json_text(structs.slice(1, 2)).to_pylist()
    assert [json.loads(v) for v in sliced] == decoded[1:]


def test_to_wire_casts_and_refuses_precision_loss() -> None:
    schema = pa.schema([("i8", pa.int8()), ("ns", pa.timestamp("ns"))])
    columns = pg_columns(schema, table="x")
    ok = pa.record_batch(
        [pa.array([1], pa.int8()), pa.array([1_000], pa.timestamp("ns"))], schema=schema
    )
    wire = to_wire(ok, columns)
    assert wire.schema.types == [pa.int16(), pa.timestamp("us")]
    lossy = pa.record_batch(
        [pa.array([1], pa.int8()), pa.array([1_001], pa.timestamp("ns"))], schema=schema
    )
    with pytest.raises(pa.ArrowInvalid):
        to_wire(lossy, columns)
