"""Reading exemplar requests back: the slowest or newest of a route, one request by its id.

Plain parameterised SQL in SQLite's dialect; over PostgreSQL the read connection
rewrites it (:mod:`instrument.storage.pg_read`), so both stores answer alike.
"""

from __future__ import annotations

from typing import Any

from instrument.core.batch import iso_utc

__all__ = ["COLUMNS", "find_requests", "request_by_id", "route_minutes"]

#: Fields of an exemplar as the API returns it, in the table's column order.
COLUMNS = ("timestamp", "minute", "request_id", "trace_id", "method", "route", "path", "query",
           "status_code", "duration_ms", "ttfb_ms", "request_bytes", "response_bytes", "client",
           "user_agent", "exception", "reason", "pid")
_SELECT = "SELECT " + ", ".join(COLUMNS) + " FROM request_exemplars"


def route_minutes(route: str | None, method: str | None, since: float | None,
                  until: float | None) -> tuple[list[str], list[Any]]:
    """WHERE terms and arguments for a route, a method and a range read in whole minutes
    (by the indexed minute column; a caller wanting the exact edges filters the rows)."""
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("route", route), ("method", method)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if since is not None:
        where.append("minute >= ?")
        args.append(int(since // 60) * 60)
    if until is not None:
        where.append("minute < ?")
        args.append(until)
    return where, args


def _rows(cur: Any) -> list[dict[str, Any]]:
    return [dict(zip(COLUMNS, row, strict=True)) for row in cur.fetchall()]


def find_requests(conn: Any, *, route: str | None = None, method: str | None = None,
                  status: int | None = None, min_ms: float | None = None,
                  since: float | None = None, until: float | None = None,
                  reason: str | None = None, order: str = "newest",
                  limit: int = 100) -> list[dict[str, Any]]:
    """Exemplars matching every filter given; ``order`` "newest" or "slowest" first.

    ``status`` may be a class: 5 matches 500-599, 4 matches 400-499.
    """
    where, args = route_minutes(route, method, since, until)
    if status is not None:
        if status < 10:
            where.append("status_code >= ? AND status_code < ?")
            args += [status * 100, status * 100 + 100]
        else:
            where.append("status_code = ?")
            args.append(status)
    if min_ms is not None:
        where.append("duration_ms >= ?")
        args.append(min_ms)
    if reason is not None:
        where.append("reason = ?")
        args.append(reason)
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
    sql += (" ORDER BY duration_ms DESC, id DESC" if order == "slowest"
            else " ORDER BY minute DESC, timestamp DESC, id DESC")
    rows = _rows(conn.execute(sql + " LIMIT ?", (*args, limit)))
    if since is not None or until is not None:  # the exact edges, inside the minutes read
        start = iso_utc(since) if since is not None else ""
        end = iso_utc(until) if until is not None else "~"
        rows = [r for r in rows if start <= r["timestamp"] < end]
    return rows


def request_by_id(conn: Any, request_id: str) -> list[dict[str, Any]]:
    """The exemplar rows stored for ``request_id`` (one, unless an id was reused)."""
    return _rows(conn.execute(_SELECT + " WHERE request_id = ? ORDER BY timestamp DESC LIMIT 10",
                              (request_id,)))
