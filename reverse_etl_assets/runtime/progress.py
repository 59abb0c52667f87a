"""Progress of a long load as one line: rows done / total, rows/s and an ETA.

Pure formatting, shared by the CLI's progress bar and the Dagster run logs.
"""

from __future__ import annotations

BAR_WIDTH = 30


def describe_progress(done: int, total: int | None, seconds: float, *, bar: bool = False) -> str:
    """E.g. `[#######.....]  45%  900,000 / 2,000,000 rows  350,000 rows/s  ETA 3s`."""
    rate = done / seconds if seconds > 0 else 0.0
    parts = []
    if total:
        share = min(done / total, 1.0)
        if bar:
            filled = int(share * BAR_WIDTH)
            parts.append("[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]")
        parts.append(f"{share:4.0%}")
        parts.append(f"{done:,} / {total:,} rows")
    else:
        parts.append(f"{done:,} rows")
    parts.append(f"{rate:,.0f} rows/s")
    if total and rate > 0 and done < total:
        parts.append(f"ETA {_duration((total - done) / rate)}")
    return "  ".join(parts)


def _duration(value: float) -> str:
    seconds = round(value)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
