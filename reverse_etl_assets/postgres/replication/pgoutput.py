"""Decode one pgoutput (protocol version 1) message from its bytes into a value of `messages`.

Pure and allocation-lean: column values stay `bytes` slices, parsed with precompiled structs.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from reverse_etl_assets.postgres.replication.messages import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    OldKind,
    Origin,
    Relation,
    RelationColumn,
    Truncate,
    Tuple,
    TypeInfo,
    Update,
    Value,
)
from reverse_etl_assets.postgres.replication.problems import ProtocolError

# Postgres timestamps on the wire are microseconds since this instant.
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

_I16 = struct.Struct("!h")
_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_U64 = struct.Struct("!Q")
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!BQQq")
_REL_COL = struct.Struct("!Ii")
_TRUNCATE = struct.Struct("!iB")
_MESSAGE = struct.Struct("!BQ")

_KIND_TEXT = 0x74  # 't'
_KIND_NULL = 0x6E  # 'n'
_KIND_UNCHANGED = 0x75  # 'u'
_KIND_BINARY = 0x62  # 'b'
_NEW = 0x4E  # 'N'
_KEY = 0x4B  # 'K'
_OLD = 0x4F  # 'O'

_TRUNCATE_CASCADE = 1
_TRUNCATE_RESTART_IDENTITY = 2


def decode_message(payload: bytes | memoryview) -> Message:
    """Decode one pgoutput message (the XLogData payload) into its frozen value."""
    buf = payload if isinstance(payload, bytes) else bytes(payload)
    if not buf:
        raise ProtocolError("empty pgoutput message")
    decoder = _DECODERS.get(buf[0])
    if decoder is None:
        raise ProtocolError(
            f"unknown pgoutput message type {chr(buf[0])!r} (byte 0x{buf[0]:02x}); this decoder "
            "speaks protocol version 1 only: check START_REPLICATION asks for proto_version '1'"
        )
    try:
        return decoder(buf)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(
            f"malformed pgoutput message of type {chr(buf[0])!r} ({len(buf)} bytes): {exc}"
        ) from exc


def pg_timestamp(microseconds: int) -> datetime:
    """Turn a wire timestamp (µs since 2000-01-01 UTC) into an aware UTC datetime."""
    return PG_EPOCH + timedelta(microseconds=microseconds)


def _read_string(buf: bytes, pos: int) -> tuple[str, int]:
    """A NUL-terminated UTF-8 string at `pos`, and the position after its NUL."""
    end = buf.index(0, pos)
    return buf[pos:end].decode(), end + 1


def _read_tuple(buf: bytes, pos: int) -> tuple[Tuple, int]:
    """TupleData at `pos`: the values as text bytes / None / UNCHANGED, and the position after."""
    (count,) = _I16.unpack_from(buf, pos)
    pos += 2
    values: list[Value] = []
    append = values.append
    unpack_len = _I32.unpack_from
    for _ in range(count):
        kind = buf[pos]
        pos += 1
        if kind == _KIND_TEXT:
            (length,) = unpack_len(buf, pos)
            pos += 4
            append(buf[pos : pos + length])
            pos += length
        elif kind == _KIND_NULL:
            append(None)
        elif kind == _KIND_UNCHANGED:
            append(UNCHANGED)
        elif kind == _KIND_BINARY:
            raise ProtocolError(
                "pgoutput sent a binary column value; the stream must not ask for binary 'true'"
            )
        else:
            raise ProtocolError(f"unknown tuple value kind {chr(kind)!r} (byte 0x{kind:02x})")
    if pos > len(buf):
        raise ProtocolError("pgoutput tuple data runs past the end of its message")
    return tuple(values), pos


def _decode_begin(buf: bytes) -> Begin:
    final_lsn, commit_us, xid = _BEGIN.unpack_from(buf, 1)
    return Begin(final_lsn=final_lsn, commit_time=pg_timestamp(commit_us), xid=xid)


def _decode_commit(buf: bytes) -> Commit:
    _flags, commit_lsn, end_lsn, commit_us = _COMMIT.unpack_from(buf, 1)
    return Commit(commit_lsn=commit_lsn, end_lsn=end_lsn, commit_time=pg_timestamp(commit_us))


def _decode_origin(buf: bytes) -> Origin:
    (lsn,) = _U64.unpack_from(buf, 1)
    name, _ = _read_string(buf, 9)
    return Origin(lsn=lsn, name=name)


def _decode_relation(buf: bytes) -> Relation:
    (oid,) = _U32.unpack_from(buf, 1)
    schema, pos = _read_string(buf, 5)
    table, pos = _read_string(buf, pos)
    replica_identity = chr(buf[pos])
    (count,) = _I16.unpack_from(buf, pos + 1)
    pos += 3
    columns = []
    for _ in range(count):
        flags = buf[pos]
        name, pos = _read_string(buf, pos + 1)
        type_oid, type_modifier = _REL_COL.unpack_from(buf, pos)
        pos += 8
        columns.append(
            RelationColumn(
                name=name, type_oid=type_oid, type_modifier=type_modifier, is_key=bool(flags & 1)
            )
        )
    return Relation(
        oid=oid,
        schema=schema,
        table=table,
        replica_identity=replica_identity,
        columns=tuple(columns),
    )


def _decode_type(buf: bytes) -> TypeInfo:
    (oid,) = _U32.unpack_from(buf, 1)
    schema, pos = _read_string(buf, 5)
    name, _ = _read_string(buf, pos)
    return TypeInfo(oid=oid, schema=schema, name=name)


def _decode_insert(buf: bytes) -> Insert:
    (oid,) = _U32.unpack_from(buf, 1)
    if buf[5] != _NEW:
        raise ProtocolError(f"Insert without a new tuple (byte 0x{buf[5]:02x} where 'N' belongs)")
    new, _ = _read_tuple(buf, 6)
    return Insert(relation_oid=oid, new=new)


def _decode_update(buf: bytes) -> Update:
    (oid,) = _U32.unpack_from(buf, 1)
    marker = buf[5]
    old_kind: OldKind | None = None
    old: Tuple | None = None
    pos = 6
    if marker in (_KEY, _OLD):
        old_kind = "K" if marker == _KEY else "O"
        old, pos = _read_tuple(buf, 6)
        marker = buf[pos]
        pos += 1
    if marker != _NEW:
        raise ProtocolError(f"Update without a new tuple (byte 0x{marker:02x} where 'N' belongs)")
    new, _ = _read_tuple(buf, pos)
    return Update(relation_oid=oid, old_kind=old_kind, old=old, new=new)


def _decode_delete(buf: bytes) -> Delete:
    (oid,) = _U32.unpack_from(buf, 1)
    marker = buf[5]
    if marker != _KEY and marker != _OLD:
        raise ProtocolError(f"Delete without an old tuple (byte 0x{marker:02x})")
    old, _ = _read_tuple(buf, 6)
    return Delete(relation_oid=oid, old_kind="K" if marker == _KEY else "O", old=old)


def _decode_truncate(buf: bytes) -> Truncate:
    count, options = _TRUNCATE.unpack_from(buf, 1)
    oids = struct.unpack_from(f"!{count}I", buf, 6)
    return Truncate(
        relation_oids=oids,
        cascade=bool(options & _TRUNCATE_CASCADE),
        restart_identity=bool(options & _TRUNCATE_RESTART_IDENTITY),
    )


def _decode_logical_message(buf: bytes) -> LogicalMessage:
    flags, lsn = _MESSAGE.unpack_from(buf, 1)
    prefix, pos = _read_string(buf, 10)
    (length,) = _I32.unpack_from(buf, pos)
    pos += 4
    content = buf[pos : pos + length]
    if len(content) != length:
        raise ProtocolError("pgoutput logical message content runs past the end of its message")
    return LogicalMessage(transactional=bool(flags & 1), lsn=lsn, prefix=prefix, content=content)


_DECODERS: dict[int, Callable[[bytes], Message]] = {
    ord("B"): _decode_begin,
    ord("C"): _decode_commit,
    ord("O"): _decode_origin,
    ord("R"): _decode_relation,
    ord("Y"): _decode_type,
    ord("I"): _decode_insert,
    ord("U"): _decode_update,
    ord("D"): _decode_delete,
    ord("T"): _decode_truncate,
    ord("M"): _decode_logical_message,
}
