"""Strict readers for query parameters: anything odd is a :class:`BadRequest` naming the parameter.

Every API handler reads its parameters through these functions, so a typo in a
URL gets a 400 that says what was expected, never a 500 or a stack trace.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from datetime import datetime, timezone

from instrument.dashboard._http import BadRequest

__all__ = ["choice", "integer", "number", "text", "timestamp"]

# Anything before 2000 or after 2200 is almost certainly milliseconds or a typo.
_MIN_TS = 946_684_800
_MAX_TS = 7_258_118_400


def number(query: Mapping[str, str], name: str, default: float, *, low: float,
           high: float) -> float:
    """A finite number with ``low < value <= high``."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"Parameter {name!r} has value {raw!r}. Not a valid number.") from None
    if not math.isfinite(value) or not low < value <= high:
        raise BadRequest(f"Parameter {name!r} has value {raw!r}. "
                         f"Expected a number greater than {low:g} and at most {high:g}.")
    return value


def integer(query: Mapping[str, str], name: str, default: int | None, *, low: int,
            high: int) -> int | None:
    """An integer with ``low <= value <= high``."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadRequest(f"Parameter {name!r} has value {raw!r}. Not a valid integer.") from None
    if not low <= value <= high:
        raise BadRequest(f"Parameter {name!r} has value {raw!r}. "
                         f"Expected an integer from {low} to {high}.")
    return value


def text(query: Mapping[str, str], name: str, *, max_length: int = 500) -> str | None:
    """A string of at most ``max_length`` characters without control characters, or None."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_length:
        raise BadRequest(f"Parameter {name!r} is longer than {max_length} characters.")
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise BadRequest(f"Parameter {name!r} contains control characters.")
    return raw


def choice(query: Mapping[str, str], name: str, options: Collection[str],
           default: str | None) -> str | None:
    """One of ``options`` (case-sensitive)."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if raw not in options:
        raise BadRequest(f"Parameter {name!r} has value {raw!r}. "
                         f"Expected one of: {', '.join(sorted(options))}.")
    return raw


def timestamp(query: Mapping[str, str], name: str, default: float | None) -> float | None:
    """Seconds since the epoch, given as a number or ISO 8601 (no zone means UTC)."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    value: float
    try:
        value = float(raw)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace(" ", "T"))
        except ValueError:
            raise BadRequest(f"Parameter {name!r} has value {raw!r}. Expected seconds since "
                             "the epoch or an ISO 8601 time such as "
                             "2024-05-01T12:00:00Z.") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        value = parsed.timestamp()
    if not math.isfinite(value) or not _MIN_TS <= value <= _MAX_TS:
        raise BadRequest(f"Parameter {name!r} has value {raw!r}. "
                         "Expected a time between 2000 and 2200 in seconds (not milliseconds).")
    return value
