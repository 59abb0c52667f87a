"""Log sequence numbers: the text form Postgres prints ('16/B374D848') and the 64-bit integer.

The pipeline keeps LSNs as ints (they compare, and go into Delta as bigint); text is for SQL.
"""

from __future__ import annotations

_MAX_LSN = (1 << 64) - 1


def parse_lsn(text: str) -> int:
    """Turn an LSN's text form ('16/B374D848') into its 64-bit integer."""
    high, sep, low = text.strip().partition("/")
    if not sep or not high or not low or len(high) > 8 or len(low) > 8:
        raise ValueError(f"not an LSN: {text!r} (expected two hex numbers like '16/B374D848')")
    try:
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise ValueError(f"not an LSN: {text!r} (expected hex digits like '16/B374D848')") from None


def format_lsn(value: int) -> str:
    """Turn a 64-bit LSN into the text form Postgres prints and accepts ('16/B374D848')."""
    if not 0 <= value <= _MAX_LSN:
        raise ValueError(f"LSN out of range: {value}")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
