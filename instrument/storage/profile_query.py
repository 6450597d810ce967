"""Reading the profiler's stacks back: samples per collapsed stack for a route and range.

Plain parameterised SQL in SQLite's dialect; PostgreSQL read connections rewrite it
(:mod:`.pg_read`). Rows are per process and hand-over; this adds them up.
"""

from __future__ import annotations

from typing import Any

from instrument.storage.exemplar_query import route_minutes

__all__ = ["profile_stacks"]


def profile_stacks(conn: Any, *, route: str | None = None, method: str | None = None,
                   since: float | None = None, until: float | None = None,
                   limit: int = 5000) -> list[tuple[str, int]]:
    """(stack, samples) for the filters given, most samples first (whole minutes)."""
    where, args = route_minutes(route, method, since, until)
    sql = "SELECT stack, sum(samples) FROM profile_stacks"
    sql += (" WHERE " + " AND ".join(where) if where else "")
    sql += " GROUP BY stack ORDER BY sum(samples) DESC, stack LIMIT ?"
    return [(str(s), int(n)) for s, n in conn.execute(sql, (*args, limit))]
