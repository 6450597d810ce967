"""The in-flight gauge in the store: one row per process (host, pid), summed by readers.

The flusher puts each process's reading on a batch (:mod:`instrument.core.inflight`);
the writer upserts it inside that batch's transaction and deletes rows that expired
an hour ago; readers sum the rows not yet expired, found through an index on the
expiry, so a scrape never reads one row per worker ever started.
"""

from __future__ import annotations

import time
from typing import Any

from instrument.core.batch import Batch

__all__ = ["read_in_flight", "write_in_flight"]

_KEEP = 3600.0  # seconds an expired row is kept before a writer deletes it
_PRUNE_EVERY = 60.0  # seconds between those deletes, per process and dialect

# -- storage (SQLite and PostgreSQL alike; ``p`` is the placeholder) ------------------------
_UPSERT = (
    "INSERT INTO process_in_flight (host, pid, in_flight, written_at, expires_at)"
    " VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT (host, pid) DO UPDATE SET"
    " in_flight = excluded.in_flight, written_at = excluded.written_at,"
    " expires_at = excluded.expires_at"
    " WHERE excluded.written_at >= process_in_flight.written_at"  # a late retry never rewinds
)
_PRUNE = {
    "?": "DELETE FROM process_in_flight WHERE expires_at < ?",
    # PostgreSQL locks rows: writers pruning at once skip each other's rows, never deadlock.
    "%s": ("DELETE FROM process_in_flight WHERE (host, pid) IN (SELECT host, pid"
           " FROM process_in_flight WHERE expires_at < %s FOR UPDATE SKIP LOCKED)"),
}
_READ = ("SELECT coalesce(sum(in_flight), 0), count(*) FROM process_in_flight"
         " WHERE expires_at >= {p}")
_next_prune: dict[str, float] = {}


def write_in_flight(conn: Any, batch: Batch, host: str, param: str = "?") -> None:
    """Store ``batch``'s reading, if it has one, inside the batch's transaction."""
    reading = batch.in_flight
    if reading is None:
        return
    conn.execute(_UPSERT.format(p=param),
                 (host, reading.pid, reading.value, reading.at, reading.until))
    mono = time.monotonic()
    if mono >= _next_prune.get(param, 0.0):
        _next_prune[param] = mono + _PRUNE_EVERY
        conn.execute(_PRUNE[param], (reading.at - _KEEP,))


def read_in_flight(conn: Any, host: str | None = None, param: str = "?",
                   now: float | None = None) -> tuple[int, int]:
    """(requests in flight, processes counted): the sum of the readings not yet expired."""
    sql = _READ.format(p=param)
    args: tuple[Any, ...] = (time.time() if now is None else now,)
    if host is not None:
        sql += f" AND host = {param}"
        args += (host,)
    row = conn.execute(sql, args).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)
