"""The pgoutput (protocol version 1) messages a lakehouse sync reads, as plain frozen values.

Column values stay the bytes of their Postgres text form; casting happens column-wise in Arrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal


class _Unchanged:
    """An unchanged TOASTed value (`u` in pgoutput): the server did not send it."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()

# One value of a tuple: its text form, None for SQL NULL, or UNCHANGED for an unsent TOAST value.
Value = bytes | None | _Unchanged
Tuple = tuple[Value, ...]
# 'K': the old tuple carries the replica identity key columns only; 'O': the whole old row (FULL).
OldKind = Literal["K", "O"]


@dataclass(frozen=True, kw_only=True)
class RelationColumn:
    """A column as the Relation message describes it."""

    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True, kw_only=True)
class Relation:
    """Sent before the first change of a table in a session, and again after its schema changes.

    `replica_identity` is pg_class.relreplident: 'd' default, 'n' nothing, 'f' full, 'i' index.
    """

    oid: int
    schema: str
    table: str
    replica_identity: str
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, kw_only=True)
class TypeInfo:
    """A non-built-in type used by a following Relation (`Y`)."""

    oid: int
    schema: str
    name: str


@dataclass(frozen=True, kw_only=True)
class Begin:
    """Start of a committed transaction; `final_lsn` is the LSN of its commit record."""

    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True, kw_only=True)
class Commit:
    """End of a transaction: `commit_lsn` is its commit record, `end_lsn` the position after it."""

    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, kw_only=True)
class Insert:
    relation_oid: int
    new: Tuple


@dataclass(frozen=True, kw_only=True)
class Update:
    """`old` is present when the key changed ('K') or under REPLICA IDENTITY FULL ('O')."""

    relation_oid: int
    old_kind: OldKind | None
    old: Tuple | None
    new: Tuple


@dataclass(frozen=True, kw_only=True)
class Delete:
    relation_oid: int
    old_kind: OldKind
    old: Tuple


@dataclass(frozen=True, kw_only=True)
class Truncate:
    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, kw_only=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, kw_only=True)
class LogicalMessage:
    """A `pg_logical_emit_message` record (sent with the `messages` option)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = (
    Relation
    | TypeInfo
    | Begin
    | Commit
    | Insert
    | Update
    | Delete
    | Truncate
    | Origin
    | LogicalMessage
)
