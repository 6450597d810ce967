"""Error groups and occurrences in storage: written with a batch, swept with retention.

A group's row is an upsert: several processes (gunicorn workers) add their counts
to one row, the earliest first sighting and the latest last one win, and the
message and traceback are those of the latest occurrence written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from instrument.core.errors import GROUP_WIDTH, OCCURRENCE_WIDTH
from instrument.storage.sqlite_metrics import insert_rows, insert_values

__all__ = ["GROUP_UPSERT", "delete_errors_before", "write_errors"]

_INSERT_OCCURRENCE = (
    "INSERT INTO error_occurrences (timestamp, minute, group_id, request_id, trace_id, kind,"
    " route, method, status_code, pid)"
)
_INSERT_GROUP = (
    "INSERT INTO error_groups (group_id, type, message, culprit, first_seen, last_seen, count,"
    " traceback)"
)
#: The upsert's tail; ``{t}`` is the table name as a qualifier (PostgreSQL needs it),
#: ``{lo}``/``{hi}`` the dialect's two-argument min and max.
GROUP_UPSERT = (
    " ON CONFLICT(group_id) DO UPDATE SET count = {t}count + excluded.count,"
    " first_seen = {lo}({t}first_seen, excluded.first_seen),"
    " message = CASE WHEN excluded.last_seen >= {t}last_seen THEN excluded.message"
    " ELSE {t}message END,"
    " traceback = CASE WHEN excluded.last_seen >= {t}last_seen"
    " THEN coalesce(excluded.traceback, {t}traceback) ELSE {t}traceback END,"
    " type = excluded.type, culprit = excluded.culprit,"
    " last_seen = {hi}({t}last_seen, excluded.last_seen)"
)
_UPSERT = GROUP_UPSERT.format(t="", lo="min", hi="max")


def write_errors(conn: sqlite3.Connection, occurrences: Sequence[Any],
                 groups: Sequence[tuple[Any, ...]]) -> None:
    """SQLite: store a batch's occurrences (flat), upsert its groups; in its transaction."""
    insert_values(conn, _INSERT_OCCURRENCE, OCCURRENCE_WIDTH, occurrences)
    if groups:
        insert_rows(conn, _INSERT_GROUP, GROUP_WIDTH, groups, _UPSERT)


def delete_errors_before(conn: Any, cutoff_iso: str, minute: int, mark: str = "?") -> int:
    """Occurrences older than the cutoff minute, and groups last seen before the cutoff."""
    removed = conn.execute(f"DELETE FROM error_occurrences WHERE minute < {mark}",
                           (minute,)).rowcount
    removed += conn.execute(f"DELETE FROM error_groups WHERE last_seen < {mark}",
                            (cutoff_iso,)).rowcount
    return int(removed)
