"""Reading error groups back: the groups of a time range, one group, a request's group.

Counts in a range come from ``error_occurrences`` (one row per occurrence, by minute,
so a range is read in whole minutes); what a group is (type, latest message and
traceback, first and last seen ever) from ``error_groups``. Plain parameterised SQL
in SQLite's dialect; PostgreSQL read connections rewrite it (:mod:`.pg_read`).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["group_detail", "group_of_request", "list_groups"]

_GROUP_COLUMNS = ("group_id", "type", "message", "culprit", "first_seen", "last_seen", "total")
_OCCURRENCE_COLUMNS = ("timestamp", "request_id", "trace_id", "kind", "route", "method",
                       "status_code", "pid")


def _minutes(since: float, until: float) -> tuple[int, int]:
    """The minutes a range touches: [first, last + 60)."""
    return int(since // 60) * 60, int(-(-until // 60)) * 60


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _groups(conn: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    rows = conn.execute(
        "SELECT group_id, type, message, culprit, first_seen, last_seen, count FROM error_groups"
        f" WHERE group_id IN ({_marks(len(ids))})", ids).fetchall()
    return {r[0]: dict(zip(_GROUP_COLUMNS, r, strict=True)) for r in rows}


def list_groups(conn: Any, since: float, until: float, *, route: str | None = None,
                method: str | None = None, limit: int = 100,
                points: int = 30) -> tuple[int, list[dict[str, Any]]]:
    """The groups seen in the range, most occurrences first; and the sparkline's step (s).

    Each group: its row (``total`` is its count ever), ``count`` in the range, the routes
    it was seen on and ``sparkline``, its occurrences in ``points`` equal steps.
    """
    lo, hi = _minutes(since, until)
    step = max(60, -(-(hi - lo) // points) // 60 * 60)
    where = "minute >= ? AND minute < ?"
    args: list[Any] = [lo, hi]
    if route is not None:
        where += " AND route = ?"
        args.append(route)
    if method is not None:
        where += " AND method = ?"
        args.append(method)
    counted = conn.execute(
        f"SELECT group_id, count(*) FROM error_occurrences WHERE {where}"
        " GROUP BY group_id ORDER BY count(*) DESC, group_id LIMIT ?", (*args, limit)).fetchall()
    ids = [r[0] for r in counted]
    info = _groups(conn, ids)
    out = {gid: {**info.get(gid, {"group_id": gid}), "count": n, "routes": [],
                 "sparkline": [0] * -(-(hi - lo) // step)} for gid, n in counted}
    if ids:
        marks = _marks(len(ids))
        for gid, kind, name, meth, n in conn.execute(
                f"SELECT group_id, kind, route, method, count(*) FROM error_occurrences"
                f" WHERE {where} AND group_id IN ({marks}) GROUP BY group_id, kind, route, method"
                " ORDER BY count(*) DESC", (*args, *ids)):
            out[gid]["routes"].append({"kind": kind, "route": name, "method": meth, "count": n})
        for gid, minute, n in conn.execute(
                f"SELECT group_id, minute, count(*) FROM error_occurrences"
                f" WHERE {where} AND group_id IN ({marks}) GROUP BY group_id, minute",
                (*args, *ids)):
            line = out[gid]["sparkline"]
            line[min(len(line) - 1, (int(minute) - lo) // step)] += n
    return step, list(out.values())


def group_detail(conn: Any, group_id: str, since: float, until: float,
                 occurrences: int = 50) -> dict[str, Any] | None:
    """One group: its row, parsed traceback, routes, recent occurrences and count per minute."""
    row = conn.execute(
        "SELECT group_id, type, message, culprit, first_seen, last_seen, count, traceback"
        " FROM error_groups WHERE group_id = ?", (group_id,)).fetchone()
    if row is None:
        return None
    group = dict(zip(_GROUP_COLUMNS, row[:7], strict=True))
    try:
        group["traceback"] = json.loads(row[7]) if row[7] else None
    except ValueError:
        group["traceback"] = None
    lo, hi = _minutes(since, until)
    args = (group_id, lo, hi)
    where = "group_id = ? AND minute >= ? AND minute < ?"
    group["per_minute"] = [{"minute": int(m), "count": n} for m, n in conn.execute(
        f"SELECT minute, count(*) FROM error_occurrences WHERE {where}"
        " GROUP BY minute ORDER BY minute", args)]
    group["count"] = sum(p["count"] for p in group["per_minute"])
    group["routes"] = [{"kind": k, "route": r, "method": m, "count": n} for k, r, m, n in
                       conn.execute(f"SELECT kind, route, method, count(*) FROM error_occurrences"
                                    f" WHERE {where} GROUP BY kind, route, method"
                                    " ORDER BY count(*) DESC", args)]
    group["occurrences"] = [dict(zip(_OCCURRENCE_COLUMNS, r, strict=True)) for r in conn.execute(
        f"SELECT {', '.join(_OCCURRENCE_COLUMNS)} FROM error_occurrences WHERE {where}"
        " ORDER BY minute DESC, timestamp DESC, id DESC LIMIT ?", (*args, occurrences))]
    return group


def group_of_request(conn: Any, request_id: str) -> dict[str, Any] | None:
    """The group of the exception a request raised, if it raised one that was grouped."""
    row = conn.execute("SELECT group_id FROM error_occurrences WHERE request_id = ?"
                       " ORDER BY id DESC LIMIT 1", (request_id,)).fetchone()
    if row is None:
        return None
    info = _groups(conn, [row[0]]).get(row[0], {"group_id": row[0]})
    return {k: info.get(k) for k in ("group_id", "type", "message", "culprit")}
