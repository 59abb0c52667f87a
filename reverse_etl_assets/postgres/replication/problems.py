"""The errors of logical replication (slot, publication, stream), each saying what to do.

`classify_server_error` turns a server error (SQLSTATE + message) into one of them.
"""

from __future__ import annotations

import re

from reverse_etl_assets.errors import ReverseEtlError, TransientError

# SQLSTATE classes after which the same request can succeed: connection exception,
# operator intervention (shutdown, terminated backend), insufficient resources.
_TRANSIENT_CLASSES = ("08", "57", "53")
_ACTIVE_PID = re.compile(r"is active for PID (\d+)")
# A walsender lingers briefly after its client closes; a slot still held after this is truly busy.
ACTIVE_GRACE_S = 2.0


class ReplicationError(ReverseEtlError):
    """A replication slot or publication is not usable as it is; a human has to act."""


class SlotMissing(ReplicationError):
    """The replication slot does not exist (dropped, or never created)."""


class SlotActive(ReplicationError):
    """Another session streams from the slot; only one reader per slot is possible."""

    def __init__(self, message: str, *, slot: str, pid: int | None) -> None:
        super().__init__(message)
        self.slot = slot
        self.pid = pid


class SlotInvalidated(ReplicationError):
    """The server invalidated the slot (it needed WAL that was removed); changes were lost."""


class PublicationMissing(ReplicationError):
    """The publication the stream reads does not exist."""


class ServerUnsupported(ReplicationError):
    """The server cannot do what was asked (version or configuration)."""


class ProtocolError(ReverseEtlError):
    """The server sent a pgoutput message this decoder does not understand (a bug or a mismatch)."""


def classify_server_error(
    sqlstate: str | None, message: str, *, slot: str, publication: str | None = None
) -> ReverseEtlError:
    """The error to raise for a server error met while using `slot` (never mentions a DSN)."""
    sqlstate = sqlstate or ""
    if sqlstate == "55006" or "is active for PID" in message:
        match = _ACTIVE_PID.search(message)
        pid = int(match.group(1)) if match else None
        return SlotActive(
            f"another follower is streaming from slot {slot} (pid {pid}); stop it first, or if it "
            f"is stuck end it with SELECT pg_terminate_backend({pid}); then retry",
            slot=slot,
            pid=pid,
        )
    if "replication slot" in message and "does not exist" in message:
        return SlotMissing(
            f"replication slot {slot} does not exist on the server; it was dropped or never "
            "created: run `sync NAME --full-refresh` to create it and take a new snapshot"
        )
    if "publication" in message and "does not exist" in message:
        return PublicationMissing(
            f"publication {publication or '?'} read through slot {slot} does not exist "
            f"(server: {message}); create it again, or run `sync NAME --full-refresh`"
        )
    if "can no longer get changes from replication slot" in message or "invalidated" in message:
        return SlotInvalidated(
            f"replication slot {slot} was invalidated by the server (server: {message}); the "
            "changes it held are lost: run `sync NAME --full-refresh`"
        )
    if sqlstate[:2] in _TRANSIENT_CLASSES:
        return TransientError(
            f"replication on slot {slot} was interrupted (server: {message}); a retry can help"
        )
    return ReplicationError(f"replication on slot {slot} failed (server: {message}, {sqlstate})")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (libpq messages never carry the password)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
