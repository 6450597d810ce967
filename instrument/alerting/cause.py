"""Where an alert points: the route and the error group behind an error-rate or latency alert.

The metrics the rules read carry, under ``cause``, the window's most failing route,
its slowest route (by p95) and its most frequent error group
(:func:`instrument.system.collector.MetricsCollector.get_current_metrics`). A rule on
an ``api.*`` error figure points at the most failing route, one on an ``api.*``
latency at the slowest; both at the top error group. The links are the dashboard's
own pages, relative to it (``#/routes/...``, ``#/errors/...``), so they hold wherever
the dashboard is mounted; notifications prefix them with ``/monitoring``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

__all__ = ["cause_line", "cause_of"]

_ERROR_WORDS = ("error", "fail", "5xx", "exception")
_LATENCY_WORDS = ("_ms", "time", "latency", "p50", "p95", "p99", "duration", "ttfb")


def _route(entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not entry or not entry.get("route"):
        return None
    route, method = str(entry["route"]), str(entry.get("method") or "")
    link = "#/routes/" + quote(route, safe="") + (f"?method={quote(method)}" if method else "")
    return {**entry, "route": route, "method": method, "link": link}


def cause_of(metric: str | None, metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cause to attach to an alert on ``metric`` (``api.error_rate_percent``), if any."""
    if not metric or not metric.startswith("api."):
        return None
    found = metrics.get("cause") or {}
    name = metric.lower()
    if any(w in name for w in _ERROR_WORDS):
        route = _route(found.get("error_route"))
    elif any(w in name for w in _LATENCY_WORDS):
        route = _route(found.get("slow_route"))
    else:
        return None
    group = found.get("error_group")
    out: dict[str, Any] = {}
    if route is not None:
        out["route"] = route
    if group and group.get("group_id"):
        out["error_group"] = {**group, "link": "#/errors/" + quote(str(group["group_id"]))}
    return out or None


def cause_line(meta: Mapping[str, Any], base: str = "/monitoring") -> str | None:
    """``Likely cause: GET /items/{id} (12 errors, p95 830 ms); KeyError: 'x' ...`` or None."""
    cause = meta.get("cause")
    if not isinstance(cause, Mapping):
        return None
    parts = []
    route = cause.get("route")
    if isinstance(route, Mapping):
        figures = []
        if route.get("errors"):
            figures.append(f"{route['errors']} errors")
        if isinstance(route.get("p95_ms"), (int, float)):
            figures.append(f"p95 {route['p95_ms']:.0f} ms")
        shown = f" ({', '.join(figures)})" if figures else ""
        parts.append(f"{route.get('method', '')} {route['route']}{shown} {base}{route['link']}"
                     .strip())
    group = cause.get("error_group")
    if isinstance(group, Mapping):
        message = str(group.get("message") or "")[:120]
        parts.append(f"{group.get('type')}: {message} {base}{group['link']}")
    return ("Likely cause: " + "; ".join(parts)) if parts else None
