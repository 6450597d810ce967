"""How the API names what the query layer returns: one route's row, totals, changes.

:mod:`instrument.queries` keeps the seed's names (``request_count``,
``p95_response_time_ms``); the API answers in shorter ones (``requests``,
``p95_ms``). The mapping lives here, once, for every endpoint that returns routes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["change", "route_stats", "status_classes", "totals"]


def route_stats(e: dict[str, Any]) -> dict[str, Any]:
    """Our names for one row of :func:`instrument.queries.api_stats`."""
    return {
        "route": e.get("endpoint"), "method": e.get("method"),
        "requests": e.get("request_count", 0), "rate_per_minute": e.get("requests_per_minute"),
        "errors": e.get("error_count", 0), "error_rate_percent": e.get("error_rate_percent"),
        "client_errors": e.get("client_error_count", 0),
        "client_error_rate_percent": (100.0 * e.get("client_error_count", 0) / e["request_count"]
                                      if e.get("request_count") else 0.0),
        "avg_ms": e.get("avg_response_time_ms"), "p50_ms": e.get("p50_response_time_ms"),
        "p95_ms": e.get("p95_response_time_ms"), "p99_ms": e.get("p99_response_time_ms"),
        "max_ms": e.get("max_response_time_ms"), "avg_ttfb_ms": e.get("avg_ttfb_ms"),
        "bytes_in": e.get("request_bytes", 0), "bytes_out": e.get("response_bytes", 0),
        "status_codes": {str(k): v for k, v in (e.get("status_codes") or {}).items()},
    }


def totals(api: dict[str, Any]) -> dict[str, Any]:
    """The all-routes totals of :func:`instrument.queries.api_stats`, in our names."""
    totals = route_stats({**api, "endpoint": None, "method": None})
    for key in ("route", "method"):
        totals.pop(key)
    return totals


def status_classes(codes: dict[str, int]) -> dict[str, int]:
    classes: dict[str, int] = {}
    for code, n in codes.items():
        cls = f"{code[0]}xx" if code[:1].isdigit() and code != "0" else "other"
        classes[cls] = classes.get(cls, 0) + n
    return classes


def change(now: dict[str, Any], before: dict[str, Any]) -> dict[str, float | None]:
    """Per numeric total, the relative change as a fraction: ``(now - before) / before``.

    0.18 means 18 % more than the previous period, -0.5 half as much. None when the
    previous value is 0 or missing (nothing to compare with), or the current one is missing.
    """
    out: dict[str, float | None] = {}
    for key, value in now.items():
        if key == "status_codes":
            continue
        old = before.get(key)
        out[key] = (value - old) / old if old and value is not None else None
    return out
