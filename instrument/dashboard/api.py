"""The REST API under ``/api/v1/monitoring/``: pure request -> response handlers over the store.

Nothing here knows about WSGI, ASGI or sockets, and nothing writes the metrics
store: a SQLite file, or a fleet's PostgreSQL database (:mod:`._pgstore`), read
with the same SQL. Summaries and the per-route table come from
:mod:`instrument.queries`; time series from the minute and hour tiers
(:mod:`._series`); alerts from the alert manager's file; logs from
:mod:`instrument.logsearch`. A bad parameter
is a 400 naming it; an unexpected failure is a 500 with no details (they go to
the ``instrument`` logger), never a stack trace in the response.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from instrument.core.batch import iso_utc
from instrument.dashboard import _health, _shapes
from instrument.dashboard import _params as p
from instrument.dashboard._alerts import AlertsView, Conflict
from instrument.dashboard._errors import error_detail, error_list
from instrument.dashboard._http import BadRequest, Request, Response, json_response, problem
from instrument.dashboard._openapi import OPENAPI
from instrument.dashboard._pgstore import columns, has_table, open_connections, unavailable
from instrument.dashboard._profile import profile
from instrument.dashboard._requests import request_detail, request_list
from instrument.dashboard._routes import route_detail
from instrument.dashboard._series import METRICS, HistogramCache, request_series
from instrument.dashboard._store import latest_system
from instrument.dashboard._syscache import SystemCache
from instrument.storage import queries

__all__ = ["MonitoringAPI"]

log = logging.getLogger("instrument")

KINDS = ("http", "call", "client", "task", "task_wait")
# Steps of 600 s and up are multiples of 600 so the 10-minute and hourly tiers can serve them.
_NICE_STEPS = (60, 120, 300, 600, 1200, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
_MAX_POINTS = 1500
_MAX_SPAN = 400 * 86400
_SORTS = {"requests": "requests", "errors": "errors", "error_rate": "error_rate_percent",
          "p95": "p95_ms", "p99": "p99_ms", "avg": "avg_ms", "max": "max_ms"}


class MonitoringAPI:
    """Answers API requests for one metrics file (and optionally one alerts file)."""

    def __init__(self, metrics_db: str, *, alerts_db: str | None = None, in_process: bool = False,
                 collection_interval: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.db = open_connections(metrics_db)  # a file, or a postgresql:// URL
        self.alerts = AlertsView(alerts_db) if alerts_db else None
        self.in_process = in_process
        self.collection_interval = collection_interval
        self.clock = clock
        self.cache = HistogramCache()
        self.system_cache = SystemCache()
        self._drops = _health.DropWatch()
        self._get: dict[str, Callable[[dict[str, str], sqlite3.Connection], Response]] = {
            "health": self.health, "metrics/summary": self.summary,
            "metrics/timeseries": self.timeseries, "metrics/system": self.system,
            "routes": self.routes, "alerts": self.alert_list, "logs": self.logs,
            "requests": request_list, "errors": self.errors,
            "profile": lambda q, conn: profile(q, conn, *self._window(q, 1.0)),
            "openapi.json": lambda q, conn: json_response(OPENAPI),
        }

    def close(self) -> None:
        self.db.close()
        if self.alerts is not None:
            self.alerts.close()

    # -- dispatch ---------------------------------------------------------------------
    def handle(self, request: Request, sub: str) -> Response:
        """Answer ``/api/v1/monitoring/<sub>``; CSRF and access were checked by the caller."""
        try:
            if sub in self._get:
                if request.method not in ("GET", "HEAD"):
                    return problem(405, f"Use GET for {sub}.", [("Allow", "GET, HEAD")])
                query = request.query
                with self.db.connection() as conn:
                    return self._get[sub](query, conn)
            parts = sub.split("/")
            if parts[0] == "requests" and len(parts) > 1 and parts[1]:  # ids may hold "/"
                if request.method not in ("GET", "HEAD"):
                    return problem(405, "Use GET for a request.", [("Allow", "GET, HEAD")])
                with self.db.connection() as conn:
                    return request_detail(sub[len("requests/"):], conn)
            if parts[0] in ("routes", "errors") and len(sub) > len(parts[0]) + 1:
                if request.method not in ("GET", "HEAD"):
                    return problem(405, f"Use GET for {parts[0]}.", [("Allow", "GET, HEAD")])
                with self.db.connection() as conn:
                    return self._one(parts[0], sub[len(parts[0]) + 1:], request.query, conn)
            if len(parts) == 3 and parts[0] == "alerts" and parts[2] == "acknowledge":
                if request.method != "POST":
                    return problem(405, "Use POST to acknowledge an alert.", [("Allow", "POST")])
                return self.acknowledge(parts[1], request)
            return problem(404, f"No API endpoint {sub!r}; see /api/v1/monitoring/openapi.json.")
        except BadRequest as exc:
            return problem(400, str(exc))
        except Conflict as exc:
            return problem(409, str(exc))
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return problem(503, "The store is busy; try again.", [("Retry-After", "1")])
            if "no such table" in str(exc) or "no such column" in str(exc):
                return problem(503, f"The metrics file is from an older version of the kit"
                                    f" ({exc}); start the instrumented app once with this"
                                    " version to upgrade it.")
            log.exception("instrument dashboard: query failed for %s", sub)
            return problem(500, "The query failed; details are in the server log.")
        except Exception as exc:
            message = unavailable(exc)
            if message is not None:
                log.warning("instrument dashboard: %s: %s", sub, type(exc).__name__)
                return problem(503, message, [("Retry-After", "1")])
            log.exception("instrument dashboard: %s failed", sub)
            return problem(500, "Unexpected error; details are in the server log.")

    # -- windows ------------------------------------------------------------------------
    def _window(self, q: dict[str, str], default_hours: float) -> tuple[float, float]:
        """``from``/``to`` if given, else the last ``hours``; as epoch seconds."""
        now = self.clock()
        if "from" in q or "to" in q:
            end = p.timestamp(q, "to", now)
            assert end is not None
            start = p.timestamp(q, "from", end - default_hours * 3600)
            assert start is not None
            if "hours" in q:
                raise BadRequest("Give either 'hours' or 'from'/'to', not both.")
        else:
            hours = p.number(q, "hours", default_hours, low=0, high=_MAX_SPAN / 3600)
            end, start = now, now - hours * 3600
        if start >= end:
            raise BadRequest("'from' must be earlier than 'to'.")
        if end - start > _MAX_SPAN:
            raise BadRequest("The window may span at most 400 days.")
        return start, end

    def _slots(self, q: dict[str, str]) -> tuple[int, int, int]:
        start, end = self._window(q, 1.0)
        step = p.integer(q, "step", None, low=60, high=7 * 86400)
        if step is None:
            wanted = (end - start) / 200
            step = next((s for s in _NICE_STEPS if s >= wanted), 86400)
            if end - start > 12 * 3600:
                step = max(3600, step)
            elif end - start > 2 * 3600:
                step = max(600, step)
        elif step % 60:
            raise BadRequest(f"Parameter 'step' has value {step}. Expected a multiple of 60.")
        lo = int(start // step) * step
        hi = math.ceil(end / step) * step
        if (hi - lo) // step > _MAX_POINTS:
            raise BadRequest(f"That is {(hi - lo) // step} points; at most {_MAX_POINTS} are"
                             " returned. Use a larger 'step' or a shorter window.")
        return lo, hi, step

    # -- endpoints ----------------------------------------------------------------------
    def summary(self, q: dict[str, str], conn: sqlite3.Connection) -> Response:
        hours = p.number(q, "hours", 24.0, low=0, high=_MAX_SPAN / 3600)
        kind = p.choice(q, "kind", KINDS, "http") or "http"
        top = p.integer(q, "top", 5, low=1, high=100) or 5
        now = self.clock()
        length = hours * 3600
        s = queries.api_stats(conn, now - length, None, kind=kind, top=top)
        lo = int((now - length) // 60) * 60  # the window is whole minutes from this one on
        system = self.system_cache.stats(conn, columns(conn, "system_metrics"), lo,
                                         (int(now // 60) + 1) * 60)
        api = s["api"]
        totals = _shapes.totals(api)
        # The previous period of the same length, ending where this window starts: the
        # minutes of [lo - length, lo) (an end is the minute holding it, so lo - 1).
        earlier = queries.api_stats(conn, lo - length, lo - 1, kind=kind, top=1)["api"]
        before = _shapes.totals(earlier)
        return json_response({
            "hours": hours, "kind": kind, "window_start": api.get("window_start"),
            "generated_at": now, "requests": totals,
            "status_classes": _shapes.status_classes(totals["status_codes"]),
            "previous": {"hours": hours, "window_start": earlier["window_start"],
                         "window_end": iso_utc(lo), "requests": before,
                         "status_classes": _shapes.status_classes(before["status_codes"])},
            "change": _shapes.change(totals, before),
            "slowest_routes": [_shapes.route_stats(e) for e in s.get("slowest_endpoints", ())],
            "failing_routes": [_shapes.route_stats(e) for e in s.get("most_failing_endpoints", ())],
            "system": system,
        })

    def routes(self, q: dict[str, str], conn: sqlite3.Connection) -> Response:
        start, end = self._window(q, 24.0)
        kind = p.choice(q, "kind", KINDS, "http") or "http"
        sort = _SORTS[p.choice(q, "sort", _SORTS, "requests") or "requests"]
        limit = p.integer(q, "limit", 100, low=1, high=1000) or 100
        stats = queries.api_stats(conn, start, end, kind=kind, top=1)
        rows = [_shapes.route_stats(e) for e in stats.get("endpoints", ())]
        rows.sort(key=lambda r: (r[sort] is None, -(r[sort] or 0), r["route"] or ""))
        return json_response({"from": start, "to": end, "kind": kind, "sort": sort,
                              "total": len(rows), "routes": rows[:limit]})

    def errors(self, q: dict[str, str], conn: sqlite3.Connection) -> Response:
        return error_list(q, conn, *self._window(q, 24.0))

    def _one(self, what: str, key: str, q: dict[str, str], conn: sqlite3.Connection) -> Response:
        """``routes/{route}`` (the template, URL-encoded) or ``errors/{group_id}``."""
        start, end = self._window(q, 24.0)
        if what == "errors":
            return error_detail(key, conn, start, end)
        if len(key) > 1000 or any(ord(c) < 32 for c in key):
            raise BadRequest("That is not a route.")
        kind = p.choice(q, "kind", KINDS, "http") or "http"
        return route_detail(key, p.text(q, "method", max_length=16), kind, conn, start, end,
                            _shapes.route_stats)

    def timeseries(self, q: dict[str, str], conn: sqlite3.Connection) -> Response:
        metrics = (q.get("metric") or "requests").split(",")
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or len(metrics) > len(METRICS):
            raise BadRequest(f"Parameter 'metric' has unknown name(s) {unknown}. "
                             f"Expected a comma-separated list of: {', '.join(METRICS)}.")
        route = p.text(q, "route")
        method = p.text(q, "method", max_length=16)
        kind = p.choice(q, "kind", KINDS, "http") or "http"
        lo, hi, step = self._slots(q)
        slots = request_series(conn, self.cache, lo, hi, step, metrics, kind=kind,
                               route=route, method=method)
        return json_response({
            "from": lo, "to": hi, "step": step, "kind": kind, "route": route, "method": method,
            "timestamps": list(range(lo, hi, step)),
            "series": {m: [s.value(m, step) for s in slots] for m in dict.fromkeys(metrics)},
        })

    def system(self, q: dict[str, str], conn: sqlite3.Connection) -> Response:
        lo, hi, step = self._slots(q)
        cols = columns(conn, "system_metrics")
        return json_response({
            "from": lo, "to": hi, "step": step, "timestamps": list(range(lo, hi, step)),
            "series": self.system_cache.series(conn, cols, lo, hi, step),
            "latest": latest_system(conn), "stats": self.system_cache.stats(conn, cols, lo, hi),
        })

    def alert_list(self, q: dict[str, str], conn: sqlite3.Connection) -> Response:
        limit = p.integer(q, "limit", 50, low=1, high=1000) or 50
        if self.alerts is None:
            return json_response({"available": False, "active": [], "history": [],
                                  "events": []})
        return json_response(self.alerts.listing(limit))

    def acknowledge(self, alert_id: str, request: Request) -> Response:
        if not alert_id or len(alert_id) > 200 or not alert_id.replace("-", "").isalnum():
            raise BadRequest("That is not an alert id.")
        by = "dashboard"
        if request.body:
            try:
                data = json.loads(request.body)
            except ValueError:
                raise BadRequest("The body must be JSON, e.g. {\"by\": \"alice\"}.") from None
            if not isinstance(data, dict):
                raise BadRequest("The body must be a JSON object.")
            raw_by = data.get("by", by)
            if not isinstance(raw_by, str) or not 0 < len(raw_by) <= 100 or \
                    any(ord(c) < 32 for c in raw_by):
                raise BadRequest("'by' must be a name of 1 to 100 printable characters.")
            by = raw_by
        if self.alerts is None:
            return problem(404, "Alerting is not configured for this dashboard.")
        alert = self.alerts.acknowledge(alert_id, by)
        if alert is None:
            return problem(404, f"No alert with id {alert_id!r}.")
        return json_response({"alert": alert})

    def logs(self, q: dict[str, str], conn: sqlite3.Connection) -> Response:
        try:
            from instrument.storage.logsearch import LogQueryError, search_logs
        except ImportError:  # pragma: no cover - the log search module ships with the kit
            return json_response({"available": False, "logs": []})
        if not has_table(conn, "logs"):
            return json_response({"available": False, "logs": []})
        limit = p.integer(q, "limit", 100, low=1, high=1000) or 100
        before = p.integer(q, "before_id", None, low=1, high=2**62)
        try:
            rows = search_logs(conn, text=p.text(q, "q"), level=p.text(q, "level", max_length=20),
                               logger=p.text(q, "logger", max_length=200),
                               request_id=p.text(q, "request_id", max_length=200),
                               since=p.timestamp(q, "from", None), until=p.timestamp(q, "to", None),
                               limit=limit, before_id=before)
        except LogQueryError as exc:
            raise BadRequest(str(exc)) from None
        return json_response({"available": True, "logs": rows})

    def health(self, q: dict[str, str], conn: sqlite3.Connection) -> Response:
        now = time.time()
        failing: list[str] = []
        degraded: list[str] = []
        checks: dict[str, Any] = {"mode": "in-process" if self.in_process else "standalone"}
        if self.in_process:
            from instrument.core.runtime import runtime

            stats = runtime.stats()
            failing, degraded = _health.in_process(stats, self._drops, now)
            checks["kit"] = stats
        store_reasons, facts = _health.from_store(conn, self.collection_interval, now)
        checks["store"] = facts
        if not self.in_process:
            degraded += store_reasons
            if self.alerts is not None:
                degraded += self.alerts.channel_problems()
        status, body = _health.merge(failing, degraded, checks)
        return json_response(body, status)
