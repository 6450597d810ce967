"""The request endpoints: exemplars by route, status and duration, and one request's page data.

``GET requests?route=&method=&status=&min_ms=&from=&to=&order=&limit=`` lists the
exemplar requests the flusher kept (the slowest and failing of each route and
minute); ``GET requests/{request_id}`` gives one of them with the log lines it
wrote, oldest first. Parameters are read strictly: a bad one is a 400.
"""

from __future__ import annotations

from typing import Any

from instrument.dashboard import _params as p
from instrument.dashboard._http import BadRequest, Response, json_response, problem
from instrument.dashboard._pgstore import has_table
from instrument.storage.error_query import group_of_request
from instrument.storage.exemplar_query import find_requests, request_by_id

__all__ = ["request_detail", "request_list"]

_ORDERS = ("newest", "slowest")
_REASONS = ("slow", "error")


def _status(q: dict[str, str]) -> int | None:
    raw = q.get("status")
    if raw is None or raw == "":
        return None
    if len(raw) == 3 and raw[0] in "12345" and raw[1:].lower() == "xx":
        return int(raw[0])  # a class: 5xx
    return p.integer(q, "status", None, low=100, high=599)


def request_list(q: dict[str, str], conn: Any) -> Response:
    if not has_table(conn, "request_exemplars"):
        return json_response({"available": False, "requests": []})
    since, until = p.timestamp(q, "from", None), p.timestamp(q, "to", None)
    if since is not None and until is not None and since >= until:
        raise BadRequest("'from' must be earlier than 'to'.")
    rows = find_requests(
        conn, route=p.text(q, "route", max_length=1000), method=p.text(q, "method", max_length=20),
        status=_status(q), min_ms=p.number(q, "min_ms", None, low=-1, high=1e9),  # type: ignore[arg-type]
        since=since, until=until, reason=p.choice(q, "reason", _REASONS, None),
        order=p.choice(q, "order", _ORDERS, "newest") or "newest",
        limit=p.integer(q, "limit", 100, low=1, high=1000) or 100)
    return json_response({"available": True, "requests": rows})


def request_detail(request_id: str, conn: Any) -> Response:
    if len(request_id) > 200 or any(ord(c) < 32 for c in request_id):
        raise BadRequest("That is not a request id.")
    rows = request_by_id(conn, request_id) if has_table(conn, "request_exemplars") else []
    logs: list[dict[str, Any]] = []
    if has_table(conn, "logs"):
        from instrument.storage.logsearch import request_logs
        logs = request_logs(conn, request_id)
    group = None
    if has_table(conn, "error_occurrences"):
        group = group_of_request(conn, request_id)
    if not rows and not logs and group is None:
        return problem(404, f"No request {request_id!r} was kept: only exemplars (the slowest"
                            " and failing requests of each route and minute) and requests"
                            " that logged are.")
    return json_response({"request_id": request_id, "request": rows[0] if rows else None,
                          "others": rows[1:], "logs": logs, "error_group": group})
