"""The OpenAPI 3.1 description served at ``/api/v1/monitoring/openapi.json``."""

from __future__ import annotations

from typing import Any

from instrument.dashboard._series import METRICS

__all__ = ["OPENAPI"]


def _q(name: str, description: str, schema: dict[str, Any],
       required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}


_NUM = {"type": "number"}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_TIME = {"oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]}
_KIND = _q("kind", "Sample kind: http requests, decorated calls, outgoing client calls, Celery"
                   " tasks (the outcome as method) or their queue waits.",
           {"type": "string", "enum": ["http", "call", "client", "task", "task_wait"],
            "default": "http"})
_HOURS = _q("hours", "Window: the last N hours (0 < N <= 9600).", {**_NUM, "default": 24})
_FROM = _q("from", "Window start: epoch seconds or ISO 8601 (UTC if no zone).", _TIME)
_TO = _q("to", "Window end (default now).", _TIME)
_STEP = _q("step", "Seconds per point, a multiple of 60 (default: up to 200 points, 10-minute"
           " multiples beyond 2 hours, whole hours beyond 12). Multiples of 600 and 3600 read"
           " the coarse tiers and are fastest. At most 1500 points.", _INT)
_TOTAL_FIELDS = ("requests", "rate_per_minute", "errors", "error_rate_percent", "client_errors",
                 "client_error_rate_percent", "avg_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms",
                 "avg_ttfb_ms", "bytes_in", "bytes_out")
_NUM_OR_NULL = {"type": ["number", "null"]}
_TOTALS = {"type": "object", "description": "All-routes totals of the window; latencies in ms"
           " (null when there were no requests), rates per minute, error rates in percent.",
           "properties": {**{k: _NUM_OR_NULL for k in _TOTAL_FIELDS},
                          "status_codes": {"type": "object",
                                           "additionalProperties": _INT}}}
_SUMMARY = {"type": "object", "properties": {
    "hours": _NUM, "kind": _STR, "window_start": _STR, "generated_at": _NUM,
    "requests": {"$ref": "#/components/schemas/Totals"},
    "status_classes": {"type": "object", "additionalProperties": _INT},
    "slowest_routes": {"type": "array"}, "failing_routes": {"type": "array"},
    "system": {"type": "object"},
    "previous": {"type": "object", "description": "The previous period of the same length,"
                 " just before this window: the whole minutes of [window_start - hours,"
                 " window_start). Same totals as 'requests'.", "properties": {
                     "hours": _NUM, "window_start": _STR, "window_end": _STR,
                     "requests": {"$ref": "#/components/schemas/Totals"},
                     "status_classes": {"type": "object", "additionalProperties": _INT}}},
    "change": {"type": "object", "description": "Per total of 'requests' (status_codes"
               " excepted), the relative change against 'previous' as a fraction:"
               " (current - previous) / previous, so 0.18 is +18 % and -0.5 half as much."
               " null when the previous value is 0 or missing, or the current one missing.",
               "properties": {k: _NUM_OR_NULL for k in _TOTAL_FIELDS}},
}}
_ERR = {"description": "Bad parameter: JSON {error, message, status}.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _get(summary: str, params: list[dict[str, Any]], ok: str,
         extra: dict[str, Any] | None = None,
         schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"schema": schema} if schema else {}
    responses: dict[str, Any] = {"200": {"description": ok,
                                         "content": {"application/json": body}},
                                 "400": _ERR, "401": {"description": "Not signed in."}}
    responses.update(extra or {})
    return {"get": {"summary": summary, "parameters": params, "responses": responses}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "instrument monitoring API", "version": "1",
             "description": "Read the metrics, alerts and logs an instrumented app stored. "
                            "Authenticate with 'Authorization: Bearer <INSTRUMENT_DASHBOARD_TOKEN>'"
                            " or the dashboard's session cookie."},
    "servers": [{"url": "/api/v1/monitoring"}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                            "cookie": {"type": "apiKey", "in": "cookie",
                                       "name": "instrument_session"}},
        "schemas": {"Error": {"type": "object", "required": ["error", "message", "status"],
                              "properties": {"error": _STR, "message": _STR, "status": _INT}},
                    "Totals": _TOTALS},
    },
    "security": [{"bearer": []}, {"cookie": []}],
    "paths": {
        "/health": _get("The kit's health: ok, degraded or failing, with reasons (without"
                        " credentials: only the status, for load balancers).", [],
                        "ok or degraded", {"503": {"description": "failing"}}),
        "/metrics/summary": _get(
            "Totals, rates, error rate, p50/p95/p99 latency, status mix, slowest and most"
            " failing routes, system averages and maxima for the last N hours; the same totals"
            " for the N hours before ('previous') and each total's relative change against"
            " them ('change', a fraction, null without a previous value).",
            [_HOURS, _KIND, _q("top", "Routes in each top list (1-100).", {**_INT, "default": 5})],
            "summary", schema=_SUMMARY),
        "/metrics/timeseries": _get(
            "Request metrics per time slot, as columns: timestamps[] and series{metric: []}.",
            [_q("metric", "Comma-separated: " + ", ".join(f"{k} ({v})" for k, v in METRICS.items()),
                {**_STR, "default": "requests"}),
             _q("route", "Only this route template.", _STR),
             _q("method", "Only this HTTP method.", _STR), _KIND, _FROM, _TO, _STEP],
            "series"),
        "/metrics/system": _get(
            "CPU, memory, disk, connection averages and network byte rates per slot, the latest"
            " reading, and averages and maxima over the window.", [_FROM, _TO, _STEP], "series"),
        "/routes": _get(
            "Per-route table: requests, rates, errors, latency percentiles, bytes.",
            [_HOURS, _FROM, _TO, _KIND,
             _q("sort", "Order by (descending).", {"type": "string", "enum": [
                 "requests", "errors", "error_rate", "p95", "p99", "avg", "max"]}),
             _q("limit", "Rows (1-1000).", {**_INT, "default": 100})], "routes"),
        "/routes/{route}": {"get": {
            "summary": "One route's page: totals and percentiles, latency histogram (one bar"
                       " per doubling), status mix, slowest and failing exemplars, error"
                       " groups, and whether the profiler has samples of it.",
            "parameters": [{"name": "route", "in": "path", "required": True, "schema": _STR,
                            "description": "The route template, URL-encoded (%2Fitems%2F"
                                           "%7Bid%7D)."},
                           _q("method", "HTTP method (default: the route's busiest).", _STR),
                           _HOURS, _FROM, _TO, _KIND],
            "responses": {"200": {"description": "the route"}, "400": _ERR,
                          "401": {"description": "Not signed in."},
                          "404": {"description": "not seen in the range"}}}},
        "/errors": _get(
            "Error groups seen in the range, most occurrences first: type, latest message"
            " (redacted), culprit, first and last seen, count in the range and ever, routes,"
            " and a sparkline (bucket_seconds a point).",
            [_HOURS, _FROM, _TO, _q("route", "Only occurrences on this route.", _STR),
             _q("method", "Only this method.", _STR),
             _q("limit", "Groups (1-1000).", {**_INT, "default": 100})], "error groups"),
        "/errors/{group_id}": {"get": {
            "summary": "One error group: its latest traceback (frames with file, line, function"
                       " and source line, in_app marked; no locals), routes, count per minute"
                       " and recent occurrences with their request and trace ids.",
            "parameters": [{"name": "group_id", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"}},
                           _HOURS, _FROM, _TO],
            "responses": {"200": {"description": "the group"}, "400": _ERR,
                          "401": {"description": "Not signed in."},
                          "404": {"description": "no such group"}}}},
        "/profile": _get(
            "The sampling profiler's stacks (INSTRUMENT_PROFILER=true): collapsed text,"
            " 'module:function;module:function count' a line, outermost frame first (what"
            " flamegraph.pl and speedscope import), or JSON with format=json.",
            [_q("route", "Only this route template.", _STR),
             _q("method", "Only this HTTP method.", _STR), _HOURS, _FROM, _TO,
             _q("format", "collapsed (text/plain) or json.",
                {"type": "string", "enum": ["collapsed", "json"], "default": "collapsed"}),
             _q("limit", "Stacks (1-50000), most samples first.", {**_INT, "default": 5000})],
            "collapsed stacks"),
        "/alerts": _get("Firing alerts, recent alerts and recent alert events.",
                        [_q("limit", "History rows (1-1000).", {**_INT, "default": 50})],
                        "alerts"),
        "/alerts/{id}/acknowledge": {"post": {
            "summary": "Acknowledge a firing alert. Browser sessions must send X-CSRF-Token"
                       " equal to the instrument_csrf cookie.",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": _STR}],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"by": _STR}}}}},
            "responses": {"200": {"description": "acknowledged (or already was)"},
                          "400": _ERR, "403": {"description": "CSRF check failed"},
                          "404": {"description": "no such alert"},
                          "409": {"description": "the alert is resolved"}}}},
        "/logs": _get(
            "Search stored log lines, newest first.",
            [_q("q", "Full-text query (FTS5: words, \"phrase\", prefix*, AND/OR/NOT).", _STR),
             _q("level", "Minimum level (DEBUG, INFO, WARNING, ERROR, CRITICAL).", _STR),
             _q("logger", "Logger name (children included).", _STR),
             _q("request_id", "Only lines of this request.", _STR), _FROM, _TO,
             _q("limit", "Rows (1-1000).", {**_INT, "default": 100}),
             _q("before_id", "Page: lines older than this id.", _INT)], "log lines"),
        "/requests": _get(
            "Exemplar requests: the slowest (INSTRUMENT_EXEMPLARS a route a minute) and the"
            " failing ones each process kept, with request and trace id, raw path, redacted"
            " query string, client, user agent, status, duration, TTFB and bytes.",
            [_q("route", "Only this route template.", _STR),
             _q("method", "Only this HTTP method.", _STR),
             _q("status", "A status code (503) or class (5xx).", _STR),
             _q("min_ms", "At least this many milliseconds.", _NUM),
             _q("reason", "slow or error.", {"type": "string", "enum": ["slow", "error"]}),
             _FROM, _TO,
             _q("order", "newest or slowest first.", {"type": "string",
                                                      "enum": ["newest", "slowest"],
                                                      "default": "newest"}),
             _q("limit", "Rows (1-1000).", {**_INT, "default": 100})], "exemplar requests"),
        "/requests/{request_id}": {"get": {
            "summary": "One kept request: its exemplar row and the log lines it wrote, oldest"
                       " first.",
            "parameters": [{"name": "request_id", "in": "path", "required": True,
                            "schema": _STR}],
            "responses": {"200": {"description": "the request"}, "400": _ERR,
                          "401": {"description": "Not signed in."},
                          "404": {"description": "not kept"}}}},
        "/openapi.json": _get("This document.", [], "OpenAPI 3.1"),
    },
}
