"""Errors the pipeline raises on purpose, each saying what happened and what to do.

`terminal` tells whether a retry can help: bad spec or bad data needs a human, a lock wait does not.
"""

from __future__ import annotations


class ReverseEtlError(Exception):
    """Base class: a message meant for the person running the sync."""

    terminal: bool = True


class SpecError(ReverseEtlError):
    """The spec file (or a source it names) is not valid; nothing was written."""


class SourceError(ReverseEtlError):
    """The Delta source cannot be read as declared (missing, unreadable, unsupported)."""


class SourceMissing(SourceError):
    """No Delta table at the source's location: a wrong path, or a table being recreated."""


class DataError(ReverseEtlError):
    """The source holds data the target cannot take as declared (duplicate key, NUL byte...)."""


class TransientError(ReverseEtlError):
    """Something that may pass by itself (a lock held by a reader, a dropped connection)."""

    terminal = False
