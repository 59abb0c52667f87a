"""The pgoutput v1 decoder on hand-built payloads (the stream tests decode a real server's)."""

from __future__ import annotations

import struct
import time
from datetime import UTC, datetime

import pytest

from reverse_etl_assets.postgres.replication.messages import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Relation,
    RelationColumn,
    Truncate,
    TypeInfo,
    Update,
)
from reverse_etl_assets.postgres.replication.pgoutput import decode_message
from reverse_etl_assets.postgres.replication.problems import ProtocolError

# 2024-01-02 03:04:05.678901 UTC in µs since 2000-01-01.
TS = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
TS_US = int((TS - datetime(2000, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000 + 678901


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def tuple_data(*values: bytes | object | None) -> bytes:
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED:
            out += b"u"
        else:
            assert isinstance(value, bytes)
            out += b"t" + struct.pack("!i", len(value)) + value
    return out


def test_begin() -> None:
    msg = decode_message(b"B" + struct.pack("!QqI", 0x16_B374D848, TS_US, 4000000000))
    assert msg == Begin(final_lsn=0x16_B374D848, commit_time=TS, xid=4000000000)


def test_commit() -> None:
    msg = decode_message(b"C" + struct.pack("!BQQq", 0, 100, 120, TS_US))
    assert msg == Commit(commit_lsn=100, end_lsn=120, commit_time=TS)


def test_origin() -> None:
    assert decode_message(b"O" + struct.pack("!Q", 77) + cstr("node_a")) == Origin(
        lsn=77, name="node_a"
    )


def test_relation_with_key_flags_and_unicode_names() -> None:
    payload = (
        b"R"
        + struct.pack("!I", 16384)
        + cstr("public")
        + cstr("tablé")
        + b"d"
        + struct.pack("!h", 2)
        + b"\x01"
        + cstr("id")
        + struct.pack("!Ii", 20, -1)
        + b"\x00"
        + cstr("price")
        + struct.pack("!Ii", 1700, (10 << 16 | 2) + 4)
    )
    assert decode_message(payload) == Relation(
        oid=16384,
        schema="public",
        table="tablé",
        replica_identity="d",
        columns=(
            RelationColumn(name="id", type_oid=20, type_modifier=-1, is_key=True),
            RelationColumn(name="price", type_oid=1700, type_modifier=655366, is_key=False),
        ),
    )


def test_type() -> None:
    payload = b"Y" + struct.pack("!I", 99999) + cstr("public") + cstr("mood")
    assert decode_message(payload) == TypeInfo(oid=99999, schema="public", name="mood")


def test_insert_keeps_text_bytes_null_empty_and_unchanged_apart() -> None:
    payload = b"I" + struct.pack("!I", 5) + b"N" + tuple_data(b"1", None, b"", UNCHANGED, b"\0x")
    msg = decode_message(payload)
    assert msg == Insert(relation_oid=5, new=(b"1", None, b"", UNCHANGED, b"\0x"))
    assert isinstance(msg, Insert) and type(msg.new[0]) is bytes


def test_update_without_old_tuple() -> None:
    msg = decode_message(b"U" + struct.pack("!I", 5) + b"N" + tuple_data(b"1", b"a"))
    assert msg == Update(relation_oid=5, old_kind=None, old=None, new=(b"1", b"a"))


@pytest.mark.parametrize("kind", ["K", "O"])
def test_update_with_old_tuple(kind: str) -> None:
    payload = (
        b"U"
        + struct.pack("!I", 5)
        + kind.encode()
        + tuple_data(b"1", None)
        + b"N"
        + tuple_data(b"2", UNCHANGED)
    )
    assert decode_message(payload) == Update(
        relation_oid=5,
        old_kind=kind,
        old=(b"1", None),
        new=(b"2", UNCHANGED),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("kind", ["K", "O"])
def test_delete(kind: str) -> None:
    payload = b"D" + struct.pack("!I", 5) + kind.encode() + tuple_data(b"7", None)
    assert decode_message(payload) == Delete(relation_oid=5, old_kind=kind, old=(b"7", None))  # type: ignore[arg-type]


def test_truncate_options_and_oids() -> None:
    payload = b"T" + struct.pack("!iB", 3, 3) + struct.pack("!III", 1, 2, 4294967295)
    assert decode_message(payload) == Truncate(
        relation_oids=(1, 2, 4294967295), cascade=True, restart_identity=True
    )
    plain = decode_message(b"T" + struct.pack("!iB", 1, 0) + struct.pack("!I", 9))
    assert plain == Truncate(relation_oids=(9,), cascade=False, restart_identity=False)


def test_logical_message_content_may_hold_nul() -> None:
    payload = b"M" + struct.pack("!BQ", 1, 42) + cstr("wm") + struct.pack("!i", 3) + b"a\0b"
    assert decode_message(payload) == LogicalMessage(
        transactional=True, lsn=42, prefix="wm", content=b"a\0b"
    )


def test_accepts_memoryview() -> None:
    payload = memoryview(b"I" + struct.pack("!I", 5) + b"N" + tuple_data(b"x"))
    assert decode_message(payload) == Insert(relation_oid=5, new=(b"x",))


def test_unknown_message_type_names_the_byte() -> None:
    with pytest.raises(ProtocolError, match=r"unknown pgoutput message type 'S' \(byte 0x53\)"):
        decode_message(b"S\0\0\0\1")


def test_binary_values_are_refused() -> None:
    payload = b"I" + struct.pack("!I", 5) + b"N" + struct.pack("!h", 1) + b"b" + b"\0\0\0\1x"
    with pytest.raises(ProtocolError, match="binary"):
        decode_message(payload)


def test_truncated_payload_is_a_clear_error() -> None:
    payload = b"I" + struct.pack("!I", 5) + b"N" + tuple_data(b"hello")
    with pytest.raises(ProtocolError, match="past the end"):
        decode_message(payload[:-2])
    with pytest.raises(ProtocolError, match="type 'B'"):
        decode_message(b"B\0\0")


def test_decodes_fast_enough_for_the_stream() -> None:
    """Print the rate for a 7-column insert; asserts correctness only (no wall-clock gate)."""
    payload = (
        b"I"
        + struct.pack("!I", 5)
        + b"N"
        + tuple_data(b"123456", b"42", b"a" * 36, b"1234.56", b"2024-01-01 00:00:00+00", b"t", None)
    )
    count = 100_000
    start = time.perf_counter()
    for _ in range(count):
        msg = decode_message(payload)
    elapsed = time.perf_counter() - start
    assert isinstance(msg, Insert) and msg.new[2] == b"a" * 36
    print(f"decode_message: {count / elapsed:,.0f} inserts/s")
