"""The NUL-byte policy on batches: a NUL anywhere in a text value is found (or stripped), whatever
the array's slice, width or chunking, and arrays without one pass unchanged."""

from __future__ import annotations

import pyarrow as pa
import pytest

from reverse_etl_assets.errors import DataError
from reverse_etl_assets.schema.delta_to_postgres import pg_columns
from reverse_etl_assets.transform.cleaning import apply_invalid_characters


def batch_of(values: pa.Array) -> tuple[pa.RecordBatch, tuple]:
    batch = pa.record_batch({"id": pa.array(range(len(values)), pa.int64()), "v": values})
    return batch, pg_columns(batch.schema, table="t")


@pytest.mark.parametrize("text_type", [pa.string(), pa.large_string()])
def test_a_nul_in_a_slice_is_found_and_one_outside_it_ignored(text_type: pa.DataType) -> None:
    values = pa.array(["ab", "c\x00d", "ef", None, "gh"], text_type)
    with_nul, columns = batch_of(values.slice(1, 3))
    with pytest.raises(DataError, match=r"column 'v' holds a NUL byte.*\{'id': 0\}"):
        apply_invalid_characters(with_nul, columns, policy="fail", table="t", key=("id",))
    stripped = apply_invalid_characters(with_nul, columns, policy="strip", table="t", key=("id",))
    assert stripped.column("v").to_pylist() == ["cd", "ef", None]
    clean, columns = batch_of(values.slice(2))
    kept = apply_invalid_characters(clean, columns, policy="fail", table="t", key=("id",))
    assert kept.column("v").to_pylist() == ["ef", None, "gh"]
