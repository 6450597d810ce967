"""A populated metrics file, real alerts and a running dashboard server, for the dashboard tests.

Samples go through the kit's own pipeline (the Aggregator and the SQLite
backend's ``write``), placed at chosen wall-clock times; expected numbers are
then computed from the raw ``api_metrics`` and ``system_metrics`` rows read
back, never from the generator's inputs.
"""

from __future__ import annotations

import contextlib
import math
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from instrument.backends.sqlite import SQLiteBackend
from instrument.core.aggregate import Aggregator
from instrument.dashboard import Dashboard
from instrument.dashboard.server import DashboardServer, make_dashboard_server

__all__ = [
    "TOKEN",
    "XSS_ROUTE",
    "Populated",
    "assert_two_periods",
    "exact_percentile",
    "fire_alert",
    "populate",
    "raw_requests",
    "running_server",
    "two_period_samples",
]

TOKEN = "test-token-0123456789abcdef"
XSS_ROUTE = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
ROUTES = (  # (route, method, median ms, share of 5xx, share of 404)
    ("/items/{id}", "GET", 8.0, 0.0, 0.05),
    ("/search", "GET", 120.0, 0.02, 0.0),
    ("/boom", "POST", 30.0, 0.5, 0.0),
    (XSS_ROUTE, "GET", 5.0, 0.0, 0.0),
)


@dataclass
class Populated:
    """Where the data went and the time it was generated around."""

    db: Path
    now: float
    recent_minutes: int
    old_minutes_ago: int


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp()


def populate(db: Path, *, recent_minutes: int = 180, seed: int = 7) -> Populated:
    """Three hours of traffic (minutes 2..recent ago), a burst 3 days ago, system readings, logs."""
    rnd = random.Random(seed)
    now = time.time()
    base = int(now // 60) * 60
    offset = time.time() - time.perf_counter()  # the Aggregator maps perf_counter the same way
    samples: list[tuple[Any, ...]] = []

    def request(wall: float, route: str, method: str, ms: float, status: int) -> None:
        t0 = wall - offset
        samples.append(("http", t0, t0 + ms / 1000.0, t0 + ms / 2000.0, route, method, status,
                        100, 1000 + status, None, False))

    for m in range(2, recent_minutes):
        minute = base - m * 60
        for route, method, median, err, missing in ROUTES:
            for _ in range(rnd.randint(1, 4) if route != XSS_ROUTE else int(m % 20 == 0)):
                wall = minute + rnd.uniform(15, 45)  # far from minute edges
                ms = median * math.exp(rnd.gauss(0, 0.6))
                r = rnd.random()
                status = 500 if r < err else 404 if r < err + missing else 200
                request(wall, route, method, ms, status)
        if m % 10 == 0:
            t0 = minute + 30 - offset
            samples.append(("call", t0, t0 + 0.002, "jobs.fetch", None))
    old = 3 * 1440
    for i in range(30):
        request(base - (old - i % 10) * 60 + 30, "/old", "GET", 50.0 + i, 200)
    sent = recv = 10_000_000
    for i in range(2 * (recent_minutes + 10)):
        wall = base - 30 * i - 10
        samples.append(("system", wall, {
            "cpu_percent": 10.0 + (i % 40), "memory_percent": 50.0 + (i % 7),
            "memory_used_mb": 1000.0, "memory_available_mb": 3000.0,
            "disk_usage_percent": 70.0, "disk_free_gb": 10.0,
            "network_bytes_sent": sent - 3000 * i, "network_bytes_recv": recv - 6000 * i,
            "active_connections": 5 + i % 3, "pid": 4242}))
    for i, (level, message, rid) in enumerate((
            (20, "user 42 signed in", "req-aaa"), (30, "slow query on search", "req-bbb"),
            (40, "payment failed for order 7", "req-bbb"), (20, "cache warmed", None))):
        name = {20: "INFO", 30: "WARNING", 40: "ERROR"}[level]
        samples.append(("log", base - 600 + i, level, name,
                        "app.web", message, None, None, rid, "/search", "GET"))
    backend = SQLiteBackend(str(db))
    try:
        backend.write(Aggregator().aggregate(samples))
    finally:
        backend.close()
    return Populated(db, now, recent_minutes, old)


# Two consecutive hours of requests with exactly representable numbers (durations of 1/4 and
# 1/8 s from whole-second starts, so every sum and mean is exact): the last hour has 30
# requests of 250 ms (6 of them 500, 3 of them 404), the hour before 20 of 125 ms (2 of them
# 500). Every request spends 62.5 ms to its first byte and moves 100 bytes in, 1000 out.
CURRENT = (range(5, 35), 250.0, [500] * 6 + [404] * 3 + [200] * 21)  # (minutes ago, ms, statuses)
PREVIOUS = (range(65, 85), 125.0, [500] * 2 + [200] * 18)


def two_period_samples(now: float, *, previous: bool = True) -> list[tuple[Any, ...]]:
    """The samples of the two hours before ``now`` (only the last one if not ``previous``)."""
    offset = time.time() - time.perf_counter()  # the Aggregator maps perf_counter the same way
    base = int(now // 60) * 60
    samples: list[tuple[Any, ...]] = []
    for minutes, ms, statuses in (CURRENT, PREVIOUS) if previous else (CURRENT,):
        for ago, status in zip(minutes, statuses, strict=True):
            t0 = float(round(base - ago * 60 + 30 - offset))  # mid-minute, a whole second
            samples.append(("http", t0, t0 + ms / 1000.0, t0 + 0.0625, "/two", "GET", status,
                            100, 1000, None, False))
    return samples


def assert_two_periods(body: dict[str, Any], *, previous: bool = True) -> None:
    """The summary of the last hour of :func:`two_period_samples`: totals, previous, change."""
    from instrument.core.histogram import bucket_index, percentile

    def pct(ms: float, n: int, q: int) -> float | None:
        return percentile({bucket_index(ms): n}, q)

    now, before, change = body["requests"], body["previous"]["requests"], body["change"]
    assert (now["requests"], now["errors"], now["client_errors"]) == (30, 6, 3)
    assert (now["error_rate_percent"], now["client_error_rate_percent"]) == (20.0, 10.0)
    assert (now["avg_ms"], now["max_ms"], now["avg_ttfb_ms"]) == (250.0, 250.0, 62.5)
    assert (now["bytes_in"], now["bytes_out"]) == (3000, 30000)
    assert body["previous"]["hours"] == 1
    start = datetime.fromisoformat(body["previous"]["window_start"])
    end = datetime.fromisoformat(body["previous"]["window_end"])
    assert body["previous"]["window_end"] == body["window_start"]  # adjacent, no overlap
    assert (end - start).total_seconds() == 3600
    if not previous:
        assert before["requests"] == 0 and before["p95_ms"] is None
        assert before["status_codes"] == {} and body["previous"]["status_classes"] == {}
        assert change == dict.fromkeys(change) and "requests" in change  # every change null
        assert "status_codes" not in change
        return
    assert before == {
        "requests": 20, "rate_per_minute": 20 * 60 / 3600, "errors": 2,
        "error_rate_percent": 10.0, "client_errors": 0, "client_error_rate_percent": 0.0,
        "avg_ms": 125.0, "p50_ms": pct(125.0, 20, 50), "p95_ms": pct(125.0, 20, 95),
        "p99_ms": pct(125.0, 20, 99), "max_ms": 125.0, "avg_ttfb_ms": 62.5,
        "bytes_in": 2000, "bytes_out": 20000, "status_codes": {"200": 18, "500": 2}}
    assert body["previous"]["status_classes"] == {"2xx": 18, "5xx": 2}

    def rel(key: str) -> float:
        return (now[key] - before[key]) / before[key]

    p95 = (pct(250.0, 30, 95), pct(125.0, 20, 95))
    assert p95[0] is not None and p95[1] is not None and now["p95_ms"] == p95[0]
    assert change == {
        "requests": 0.5, "rate_per_minute": rel("rate_per_minute"), "errors": 2.0,
        "error_rate_percent": 1.0, "client_errors": None, "client_error_rate_percent": None,
        "avg_ms": 1.0, "p50_ms": rel("p50_ms"), "p95_ms": (p95[0] - p95[1]) / p95[1],
        "p99_ms": rel("p99_ms"), "max_ms": 1.0, "avg_ttfb_ms": 0.0, "bytes_in": 0.5,
        "bytes_out": 0.5}
    assert change["p95_ms"] == 1.0  # 250 ms sits exactly one doubling (16 buckets) above 125


def raw_requests(db: Path, lo: float, hi: float, *,
                 route: str | None = None) -> list[dict[str, Any]]:
    """Raw ``api_metrics`` rows with ``lo <= time < hi`` (epoch seconds)."""
    conn = sqlite3.connect(str(db))
    try:
        rows = conn.execute("SELECT timestamp, endpoint, method, status_code, response_time_ms,"
                            " error_count FROM api_metrics").fetchall()
    finally:
        conn.close()
    out = []
    for ts, endpoint, method, status, ms, err in rows:
        t = _epoch(ts)
        if lo <= t < hi and (route is None or endpoint == route):
            out.append({"t": t, "route": endpoint, "method": method, "status": status,
                        "ms": ms, "error": err})
    return out


def exact_percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of raw values."""
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * q / 100.0))
    return ordered[rank - 1]


def fire_alert(alerts_db: Path, name: str = "checkout_errors", description: str = "Too many 5xx",
               labels: dict[str, str] | None = None) -> str:
    """Make a real AlertManager fire one threshold alert in ``alerts_db``; returns its id."""
    from instrument.alerting import AlertManager, AlertRule, AlertSeverity, Threshold

    manager = AlertManager(db_path=str(alerts_db), default_rules=False, environ={})
    try:
        manager.add_rule(AlertRule(name, description, AlertSeverity.HIGH,
                                   Threshold("api.error_rate_percent", ">", 5.0),
                                   labels=labels or {}))
        manager.evaluate({"api": {"error_rate_percent": 50.0}})
        manager.evaluate({"api": {"error_rate_percent": 50.0}})
        alert = manager.active_alerts[name]
        return alert.id
    finally:
        manager.close()


@contextlib.contextmanager
def running_server(db: Path, *, alerts_db: Path | None = None, token: str | None = TOKEN,
                   public: bool = False) -> Iterator[tuple[DashboardServer, Dashboard]]:
    """The standalone dashboard server on a free loopback port, in a thread."""
    dashboard = Dashboard(str(db), alerts_db=str(alerts_db) if alerts_db else None, token=token,
                          public=public)
    server = make_dashboard_server(dashboard, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="dashboard-test-server", daemon=True)
    thread.start()
    try:
        yield server, dashboard
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)
        dashboard.close()
