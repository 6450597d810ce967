"""Writing and expiring rows of the ``logs`` table and its FTS5 index (schema migration 3).

``logs_fts`` is an external-content FTS5 table over ``logs.message`` and
``logs.exception``. The migration runner splits statements on ``;``, so there
are no triggers: this module keeps the index in step inside the writer's own
transaction, adding index entries for new rows and removing them (FTS5
``'delete'`` command, which needs the original text) before rows expire.

``logs_minutes`` keeps, per minute of record time, the lowest and highest id its
lines were stored under. Lines reach the table in batches from several
processes, so ids follow time only roughly; these bounds are exact all the
same, and let a search over a time window read just that window's rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from instrument.storage.rows import log_rows

__all__ = ["delete_logs_before", "write_logs"]

_INSERT = (
    "INSERT INTO logs (timestamp, level, levelno, logger, message, exception, extra,"
    " request_id, route, method, pid) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
_MINUTES = (
    "INSERT INTO logs_minutes (minute, first_id, last_id) VALUES (?,?,?)"
    " ON CONFLICT(minute) DO UPDATE SET first_id = min(first_id, excluded.first_id),"
    " last_id = max(last_id, excluded.last_id)"
)
_INDEX_NEW = (
    "INSERT INTO logs_fts (rowid, message, exception)"
    " SELECT id, message, exception FROM logs WHERE id > ?"
)


def write_logs(conn: sqlite3.Connection, samples: Sequence[tuple[Any, ...]]) -> int:
    """Insert log samples and index them; call inside the writer's transaction."""
    if not samples:
        return 0
    # In time order, so that one process's lines get ids in the order they were logged.
    samples = sorted(samples, key=_created)
    last = conn.execute("SELECT coalesce(max(id), 0) FROM logs").fetchone()[0]
    conn.executemany(_INSERT, log_rows(samples))
    # Rowids of a table never emptied are max(rowid) + 1: ours are last+1 .. last+n.
    # (Checked, not assumed: a table emptied by retention can reuse lower ids.)
    first = conn.execute("SELECT min(id) FROM logs WHERE id > ?", (last,)).fetchone()[0]
    minutes: dict[int, list[int]] = {}
    for i, s in enumerate(samples, first):
        minute = int(s[1] // 60) * 60
        span = minutes.get(minute)
        if span is None:
            minutes[minute] = [i, i]
        else:
            span[1] = i
    conn.executemany(_MINUTES, [(m, a, b) for m, (a, b) in minutes.items()])
    conn.execute(_INDEX_NEW, (last,))
    return len(samples)


def _created(sample: tuple[Any, ...]) -> float:
    return float(sample[1])


def delete_logs_before(conn: sqlite3.Connection, cutoff_iso: str, chunk: int = 20_000) -> int:
    """Delete lines older than ``cutoff_iso`` with their index entries, a chunk per transaction."""
    removed = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            hi = conn.execute(
                "SELECT max(id) FROM (SELECT id FROM logs WHERE timestamp < ? ORDER BY timestamp"
                " LIMIT ?)",
                (cutoff_iso, chunk)).fetchone()[0]
            if hi is None:
                cutoff = datetime.fromisoformat(cutoff_iso).replace(tzinfo=timezone.utc)
                conn.execute("DELETE FROM logs_minutes WHERE minute < ?",
                             (int(cutoff.timestamp() // 60) * 60,))
                conn.execute("COMMIT")
                return removed
            conn.execute(
                "INSERT INTO logs_fts (logs_fts, rowid, message, exception)"
                " SELECT 'delete', id, message, exception FROM logs"
                " WHERE id <= ? AND timestamp < ?", (hi, cutoff_iso))
            n = conn.execute("DELETE FROM logs WHERE id <= ? AND timestamp < ?",
                             (hi, cutoff_iso)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        removed += n
