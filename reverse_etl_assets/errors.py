"""The one error policy: every error raised on purpose, and whether a retry can help.

`terminal` tells it: bad spec, bad data or a missing role needs a human; a lock wait or a dropped
connection does not. Errors of psycopg and deltalake are translated here, at the boundary, so the
follower, the CLI and the Dagster shell all read the same answer.
"""

from __future__ import annotations

import psycopg
from deltalake.exceptions import (
    CommitFailedError,
    DeltaError,
    DeltaProtocolError,
    SchemaMismatchError,
    TableNotFoundError,
)
from psycopg import errors as pg_errors


class ReverseEtlError(Exception):
    """Base class: a message meant for the person running the sync."""

    terminal: bool = True


class SpecError(ReverseEtlError):
    """The spec file (or a source it names) is not valid; nothing was written."""


class ConfigError(ReverseEtlError):
    """The environment is not usable as set (a malformed DSN, no DSN, a role that is missing)."""


class SourceError(ReverseEtlError):
    """The Delta source cannot be read as declared (missing, unreadable, unsupported)."""


class SourceMissing(SourceError):
    """No Delta table at the source's location: a wrong path, or a table being recreated.

    Retryable: a table dropped and recreated at its path is absent for a moment.
    """

    terminal = False


class DataError(ReverseEtlError):
    """The source holds data the target cannot take as declared (duplicate key, NUL byte...)."""


class TransientError(ReverseEtlError):
    """Something that may pass by itself (a lock held by a reader, a dropped connection)."""

    terminal = False


class CheckpointMoved(TransientError):
    """A planned sync found the checkpoint no longer where it was planned from (another sync
    landed, or the table was reset meanwhile): nothing was written; plan again."""


# SQLSTATEs that a retry can cure: the server going away or refusing for now, lock and
# serialization conflicts, a statement cancelled by a timeout we set.
_TRANSIENT_POSTGRES = (
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.LockNotAvailable,
    pg_errors.AdminShutdown,
    pg_errors.CrashShutdown,
    pg_errors.CannotConnectNow,
    pg_errors.TooManyConnections,
    pg_errors.QueryCanceled,
    pg_errors.ObjectInUse,
)
# Connection-time SQLSTATEs that need a human: a role or database that does not exist, a wrong
# password. libpq reports them as OperationalError, like an unreachable server.
_TERMINAL_CONNECT_STATES = {"28000", "28P01", "3D000", "42501"}
_TERMINAL_CONNECT_WORDS = ("does not exist", "password authentication failed", "no pg_hba.conf")


def translate(exc: BaseException) -> ReverseEtlError | None:
    """`exc` in the policy's terms, or None when it is not a known library error.

    The message keeps the library's words (never a DSN: callers do not put one in).
    """
    if isinstance(exc, ReverseEtlError):
        return exc
    if isinstance(exc, psycopg.Error):
        return _translate_postgres(exc)
    if isinstance(exc, TableNotFoundError):
        return SourceMissing(f"no Delta table found: {exc}")
    if isinstance(exc, (SchemaMismatchError, DeltaProtocolError)):
        return SourceError(f"Delta refused the table as it is: {exc}")
    if isinstance(exc, (CommitFailedError, DeltaError, OSError)):
        return TransientError(f"Delta table or object store: {exc}")
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether a retry (with backoff) can help with `exc`."""
    translated = translate(exc)
    return translated is not None and not translated.terminal


def _translate_postgres(exc: psycopg.Error) -> ReverseEtlError:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, _TRANSIENT_POSTGRES):
        return TransientError(f"Postgres: {text} (a retry may succeed)")
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        if exc.sqlstate in _TERMINAL_CONNECT_STATES or any(
            word in text for word in _TERMINAL_CONNECT_WORDS
        ):
            return ConfigError(
                f"Postgres refused the connection: {text}. Check the role, password and database "
                "in REVERSE_ETL_PG_DSN"
            )
        return TransientError(f"Postgres is unreachable or went away: {text}")
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return ConfigError(
            f"Postgres: {text}. The role the pipeline connects as needs this privilege"
        )
    if isinstance(exc, pg_errors.UndefinedObject):
        return ConfigError(f"Postgres: {text}")
    return ReverseEtlError(f"Postgres: {text}")
