"""What SQLite's and PostgreSQL's log search share: the filters' values, checked, and the rows.

Both stores answer :func:`instrument.logsearch.search_logs` with the same
meaning; the values a caller passes are checked here once, so a bad one is the
same :class:`LogQueryError` (a ``ValueError``, a 400 in the dashboard) whichever
store is behind it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

from instrument.core.batch import iso_utc

__all__ = ["COLUMNS", "MAX_LIMIT", "Filters", "LogQueryError", "When", "as_items", "checked",
           "checked_limit", "iso_bound", "levelno"]

When = datetime | float | int | str | None

#: The ``logs`` columns a search returns, in order.
COLUMNS = ("id", "timestamp", "level", "levelno", "logger", "message", "exception", "extra",
           "request_id", "route", "method", "pid")
#: Most lines one search returns, whatever ``limit`` asks.
MAX_LIMIT = 10_000


class LogQueryError(ValueError):
    """A search the store cannot run: bad full-text syntax or a bad filter value."""


def levelno(level: int | str) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.strip().upper())
    if isinstance(value, int):
        return value
    if level.strip().isdigit():
        return int(level.strip())
    raise LogQueryError(f"Unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR, "
                        "CRITICAL or a number.")


def iso_bound(value: When, name: str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.isoformat(timespec="microseconds")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return iso_utc(float(value))
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise LogQueryError(f"{name}={value!r} is not an ISO 8601 time.") from None
        return iso_bound(parsed, name)
    raise LogQueryError(f"{name} must be a datetime, epoch seconds or ISO 8601 text.")


def checked_limit(limit: Any) -> int:
    """``limit`` as the rows to return (at most :data:`MAX_LIMIT`); not a positive int raises."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise LogQueryError(f"limit must be a positive integer, not {limit!r}.")
    return min(limit, MAX_LIMIT)


class Filters(NamedTuple):
    """A search's checked values: what either store puts in its WHERE clause."""

    limit: int
    levelno: int | None
    since: str | None
    until: str | None


def checked(level: int | str | None, since: When, until: When, limit: Any) -> Filters:
    """The filters both stores share, checked once: a bad one raises :class:`LogQueryError`."""
    return Filters(checked_limit(limit), None if level is None else levelno(level),
                   None if since is None else iso_bound(since, "since"),
                   None if until is None else iso_bound(until, "until"))


def as_items(rows: Iterable[Sequence[Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Result rows as dicts, ``extra`` decoded from its JSON (kept as text if it is not)."""
    out = []
    for row in rows:
        item = dict(zip(columns, row, strict=True))
        if item["extra"]:
            try:
                item["extra"] = json.loads(item["extra"])
            except ValueError:
                pass
        out.append(item)
    return out
