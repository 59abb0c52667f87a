"""Read a logical replication slot's pgoutput stream, frame by frame, and acknowledge it.

Keepalives are answered inside; the slot only ever advances to what the caller acknowledged.
"""

from __future__ import annotations

import select
import struct
import time
from dataclasses import dataclass
from types import TracebackType

import psycopg
from psycopg import pq, sql

from reverse_etl_assets.errors import ReverseEtlError, TransientError
from reverse_etl_assets.postgres.replication.lsn import format_lsn
from reverse_etl_assets.postgres.replication.messages import Message
from reverse_etl_assets.postgres.replication.pgoutput import PG_EPOCH, decode_message
from reverse_etl_assets.postgres.replication.problems import (
    ACTIVE_GRACE_S,
    ProtocolError,
    SlotActive,
    classify_server_error,
    first_line,
)
from reverse_etl_assets.postgres.replication.session import connect_replication

# The server drops a walsender that is silent for wal_sender_timeout (60 s by default).
STATUS_INTERVAL_S = 10.0

_XLOG_HEADER = struct.Struct("!QQq")  # data_start, wal_end, server send time
_KEEPALIVE = struct.Struct("!QqB")  # wal_end, server send time, reply requested
_STATUS = struct.Struct("!QQQqB")  # write, flush, apply, client time, reply requested
_XLOG_DATA = 0x77  # 'w'
_KEEPALIVE_BYTE = 0x6B  # 'k'


@dataclass(frozen=True, kw_only=True)
class XLogData:
    """One data frame: where its WAL record starts, the server's WAL end, the decoded message."""

    data_start: int
    wal_end: int
    message: Message


class ReplicationStream:
    """A `START_REPLICATION … LOGICAL` session on one slot and publication (pgoutput v1, text)."""

    def __init__(
        self,
        dsn: str,
        *,
        slot: str,
        publication: str,
        start_lsn: int = 0,
        application_name: str = "reverse_etl",
    ) -> None:
        self.slot = slot
        self.publication = publication
        self._flush_lsn = start_lsn
        self._server_wal_end = 0
        self._last_status = time.monotonic()
        try:
            self._conn = connect_replication(dsn, application_name=application_name)
        except psycopg.OperationalError as exc:
            raise TransientError(
                f"cannot open a replication connection for slot {slot}: {first_line(exc)}"
            ) from exc
        give_up = time.monotonic() + ACTIVE_GRACE_S
        while True:
            try:
                self._conn.execute(self._start_command(start_lsn))
                break
            except psycopg.Error as exc:
                error = self._error(exc)
                if isinstance(error, SlotActive) and time.monotonic() < give_up:
                    time.sleep(0.05)
                    continue
                self._conn.close()
                raise error from exc
        self._pgconn = self._conn.pgconn
        self._socket = self._pgconn.socket

    def _start_command(self, start_lsn: int) -> sql.Composed:
        """The START_REPLICATION command (publication names are a quoted identifier list)."""
        publications = sql.Identifier(self.publication).as_string(self._conn)
        return sql.SQL(
            "START_REPLICATION SLOT {slot} LOGICAL {lsn} "
            "(proto_version '1', publication_names {pubs}, messages 'true')"
        ).format(
            slot=sql.Identifier(self.slot),
            lsn=sql.SQL(format_lsn(start_lsn)),
            pubs=sql.Literal(publications),
        )

    @property
    def server_wal_end(self) -> int:
        """The highest WAL end the server reported in any frame (keepalive or data)."""
        return self._server_wal_end

    def read(self, timeout: float) -> XLogData | None:
        """The next data frame, or None when none arrived within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if now - self._last_status >= STATUS_INTERVAL_S:
                self._send(reply_requested=False)
            frame = self._next_frame()
            if frame is not None:
                kind = frame[0]
                if kind == _XLOG_DATA:
                    data_start, wal_end, _ = _XLOG_HEADER.unpack_from(frame, 1)
                    if wal_end > self._server_wal_end:
                        self._server_wal_end = wal_end
                    return XLogData(
                        data_start=data_start, wal_end=wal_end, message=decode_message(frame[25:])
                    )
                if kind == _KEEPALIVE_BYTE:
                    wal_end, _, reply = _KEEPALIVE.unpack_from(frame, 1)
                    if wal_end > self._server_wal_end:
                        self._server_wal_end = wal_end
                    if reply:
                        self._send(reply_requested=False)
                    continue
                raise ProtocolError(
                    f"unknown replication frame {chr(kind)!r} (byte 0x{kind:02x}) on slot "
                    f"{self.slot}"
                )
            remaining = deadline - now
            if remaining <= 0:
                return None
            wait = min(remaining, max(0.0, self._last_status + STATUS_INTERVAL_S - now))
            self._wait_readable(wait)

    def send_status(self, *, flush_lsn: int, reply_requested: bool = False) -> None:
        """Acknowledge everything up to `flush_lsn` (durable downstream); optionally ask a reply."""
        if flush_lsn > self._flush_lsn:
            self._flush_lsn = flush_lsn
        self._send(reply_requested=reply_requested)

    def close(self) -> None:
        """Close the connection (the server keeps the slot at its last acknowledged position)."""
        self._conn.close()

    def __enter__(self) -> ReplicationStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _next_frame(self) -> bytes | None:
        """One CopyData frame if one is buffered, else None; raises when the stream ended."""
        try:
            nbytes, data = self._pgconn.get_copy_data(1)
        except psycopg.OperationalError as exc:
            raise self._dropped(exc) from exc
        if nbytes > 0:
            return bytes(data)
        if nbytes == 0:
            return None
        raise self._stream_end()

    def _wait_readable(self, seconds: float) -> None:
        """Wait up to `seconds` for the socket, then pull what arrived into libpq's buffer."""
        try:
            select.select([self._socket], [], [], seconds)
            self._pgconn.consume_input()
        except (OSError, psycopg.OperationalError) as exc:
            raise self._dropped(exc) from exc

    def _send(self, *, reply_requested: bool) -> None:
        """Send a standby status update carrying the acknowledged LSN (never more)."""
        lsn = self._flush_lsn
        now_us = int((time.time() - PG_EPOCH.timestamp()) * 1_000_000)
        message = b"r" + _STATUS.pack(lsn, lsn, lsn, now_us, 1 if reply_requested else 0)
        try:
            self._pgconn.put_copy_data(message)
            self._pgconn.flush()
        except psycopg.OperationalError as exc:
            raise self._dropped(exc) from exc
        self._last_status = time.monotonic()

    def _stream_end(self) -> ReverseEtlError:
        """The error for a COPY that ended: the server's error if it sent one, else a drop."""
        result = self._pgconn.get_result()
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
            sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
            primary = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b""
            return classify_server_error(
                sqlstate.decode() if sqlstate else None,
                primary.decode(errors="replace"),
                slot=self.slot,
                publication=self.publication,
            )
        return TransientError(
            f"the server ended replication on slot {self.slot}; reconnect to resume"
        )

    def _dropped(self, exc: BaseException) -> TransientError:
        """A lost connection: retrying resumes from the last acknowledged position."""
        return TransientError(
            f"replication connection for slot {self.slot} dropped ({first_line(exc)}); "
            "reconnect to resume from the last acknowledged position"
        )

    def _error(self, exc: psycopg.Error) -> ReverseEtlError:
        """The error for a server error on START_REPLICATION."""
        if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
            return self._dropped(exc)
        primary = exc.diag.message_primary or str(exc)
        return classify_server_error(
            exc.sqlstate, primary, slot=self.slot, publication=self.publication
        )
