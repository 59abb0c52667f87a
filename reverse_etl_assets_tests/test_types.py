"""The type map (DDL and wire encoding from one table) and JSON encoding of nested values.

Pure Arrow; the round trip through Postgres is in test_snapshot.
"""

from __future__ import annotations

import datetime
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


def test_map_keys_of_any_type_become_their_string_form() -> None:
    ints = pa.array([[(1, "a"), (2, None)], None, []], pa.map_(pa.int32(), pa.string()))
    assert json_text(ints).to_pylist() == ['{"1":"a","2":null}', None, "{}"]
    assert json_text(ints.slice(1)).to_pylist() == [None, "{}"]  # a batch cut from a table
    days = pa.array([[(datetime.date(2024, 1, 31), 1)]], pa.map_(pa.date32(), pa.int64()))
    assert json_text(days).to_pylist() == ['{"2024-01-31":1}']
    flags = pa.array([[(True, 1), (False, 0)]], pa.map_(pa.bool_(), pa.int8()))
    assert json_text(flags).to_pylist() == ['{"true":1,"false":0}']
    blobs = pa.array([[(b"\x00a", 1)]], pa.map_(pa.binary(), pa.int64()))
    assert json_text(blobs).to_pylist() == ['{"AGE=":1}']
    # nested: a map of maps inside a struct, maps inside a list
    nested = pa.array(
        [{"m": [(1, [(True, 2)])]}, None],
        pa.struct([("m", pa.map_(pa.int64(), pa.map_(pa.bool_(), pa.int8())))]),
    )
    assert json_text(nested).to_pylist() == ['{"m":{"1":{"true":2}}}', None]
    listed = pa.array([[[(1.5, "x")], None], None], pa.list_(pa.map_(pa.float64(), pa.string())))
    assert json_text(listed).to_pylist() == ['[{"1.5":"x"},null]', None]


def test_sliced_nested_values_with_nulls_encode() -> None:
    # Increments cut their batches from one table: slices with an offset and a null bitmap.
    blobs = pa.array([[b"a"], None, [b"c"]], pa.list_(pa.binary()))
    assert json_text(blobs.slice(1)).to_pylist() == [None, '["Yw=="]']
    maps = pa.array([[("k", b"a")], None, [("j", b"c")]], pa.map_(pa.string(), pa.binary()))
    assert json_text(maps.slice(1)).to_pylist() == [None, '{"j":"Yw=="}']


def test_system_column_names_are_refused_for_every_writer() -> None:
    # pg_columns serves the syncs and the Postgres IO manager alike
    with pytest.raises(SpecError, match=r"'x': column 'ctid' has the name of a Postgres system"):
        pg_columns(pa.schema([("id", pa.int64()), ("ctid", pa.string())]), table="x")
    assert [c.name for c in pg_columns(pa.schema([("CTID", pa.string())]), table="x")] == ["CTID"]


def test_map_keys_nan_and_infinities_stay_apart() -> None:
    # JSON has no NaN/Infinity values (they become null), but an object key is text: as "null"
    # they were three equal keys, and jsonb kept only the last entry.
    for float_type in (pa.float64(), pa.float32()):
        keys = pa.array(
            [[(math.nan, 1), (math.inf, 2), (-math.inf, 3), (2.5, 4)]],
            pa.map_(float_type, pa.int32()),
        )
        assert json.loads(json_text(keys).to_pylist()[0]) == {
            "NaN": 1,
            "Infinity": 2,
            "-Infinity": 3,
            "2.5": 4,
        }
