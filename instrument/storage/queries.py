"""Read-side SQL over the metrics store: summaries, per-route tables, system and app metrics.

Every function takes a ``sqlite3.Connection`` or a path (opened read-only for
the call) and answers from the rollups, never from the raw ``api_metrics``
rows, so cost depends on the window and the number of routes, not on traffic.
A window is whole minutes: the minute holding ``start`` up to the minute
holding ``end`` (``None``: everything up to now). It is read as whole 6-hour
blocks, then hours, 10-minute blocks and single minutes at the edges, so a
24-hour summary reads about 15 rows per series whatever the traffic (see
``backends/_sqlite_metrics.py``).

Latency percentiles come from log-linear histograms with 16 buckets per
doubling (:mod:`instrument.core.histogram`): the reported value is the geometric
middle of the bucket holding the nearest-rank sample, within 2.2 % of it.
Empty windows report zero counts and rates and ``None`` latencies.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Union

from instrument.core.batch import iso_utc
from instrument.core.forkguard import sqlite_section
from instrument.storage.histblob import hist_low, hist_value
from instrument.storage.rows import COARSE_PERIODS
from instrument.storage.tiers import (
    FOREVER,
    PCT_KEYS,
    SUMS,
    bounds,
    covered,
    histograms,
    latency,
    plan,
    rollups,
)

_STEPS = ((60, 3 * 3600), (600, 36 * 3600), (3600, 9 * 86400))  # (step, longest window)


Database = Union[sqlite3.Connection, str, "os.PathLike[str]"]


def open_readonly(path: str | os.PathLike[str], timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection that waits for writers instead of failing."""
    with sqlite_section():
        conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True,
                               timeout=timeout, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000):d}")
    return conn


@contextmanager
def _db(db: Database) -> Iterator[sqlite3.Connection]:
    with sqlite_section():  # no fork while this thread is inside SQLite (see _forkguard)
        if not isinstance(db, (str, os.PathLike)):  # an open connection: SQLite, or PostgreSQL
            yield db  # through storage.pg_read.PgQueryConnection, which speaks this SQL
            return
        if str(db).startswith(("postgresql://", "postgres://")):
            from instrument.storage.pg_read import PgQueryConnection

            conn: Any = PgQueryConnection.open(str(db))
        else:
            conn = open_readonly(db)
        try:
            yield conn
        finally:
            conn.close()


def _stats(count: int, errors: int, sum_ms: float, max_ms: float | None, ttfb: float, qb: int,
           rb: int, seconds: float) -> dict[str, Any]:
    return {
        "request_count": count,
        "requests_per_minute": count * 60.0 / seconds,
        "requests_per_second": count / seconds,
        "error_count": errors,
        "error_rate_percent": 100.0 * errors / count if count else 0.0,
        "avg_response_time_ms": sum_ms / count if count else None,
        "max_response_time_ms": max_ms if count else None,
        "avg_ttfb_ms": ttfb / count if count else None,
        "request_bytes": qb,
        "response_bytes": rb,
    }


def api_stats(db: Database, start: float, end: float | None = None, *, kind: str = "http",
              top: int = 5, route: str | None = None) -> dict[str, Any]:
    """Totals, rates, percentiles and status codes for ``kind``, plus the per-route table.

    Returns ``{'api': {...}, 'endpoints': [...], 'slowest_endpoints': [...],
    'most_failing_endpoints': [...]}``; errors are status >= 500 or an exception,
    ``client_error_count`` is 4xx. ``route``: that route's rows only (its methods), so a
    route's page reads its own rollups, not every route's.
    """
    lo, hi = bounds(start, end)
    periods = plan(lo, hi)
    seconds = covered(lo, hi)
    with _db(db) as conn:
        sums = rollups(conn, kind, periods, route)
        hists = histograms(conn, kind, periods, route)
    routes: dict[tuple[str, str], list[Any]] = {}
    statuses: dict[int, int] = {}
    for (name, method, status), (count, errors, sum_ms, max_ms, ttfb, qb, rb) in sums.items():
        r = routes.setdefault((name, method), [0, 0, 0.0, 0.0, 0.0, 0, 0, 0, {}])
        r[0] += count
        r[1] += errors
        r[2] += sum_ms
        r[3] = max(r[3], max_ms)
        r[4] += ttfb
        r[5] += qb
        r[6] += rb
        r[7] += count if 400 <= status < 500 else 0
        r[8][status] = r[8].get(status, 0) + count
        statuses[status] = statuses.get(status, 0) + count
    endpoints = []
    floor = min((h[0] for h in hists.values()), default=0)
    overall = 0
    for (name, method), r in routes.items():
        entry = {"endpoint": name, "method": method,
                 **_stats(r[0], r[1], r[2], r[3], r[4], r[5], r[6], seconds),
                 "client_error_count": r[7], "status_codes": dict(sorted(r[8].items()))}
        hist = hists.get((name, method), (0, 0))
        entry.update(latency(hist))
        overall += hist[1] << ((hist[0] - floor) * 64)
        endpoints.append(entry)
    totals = [sum(r[i] for r in routes.values()) for i in range(8)]
    totals[3] = max((r[3] for r in routes.values()), default=None)
    api = {**_stats(totals[0], totals[1], totals[2], totals[3], totals[4], totals[5], totals[6],
                    seconds), "client_error_count": totals[7],
           "status_codes": dict(sorted(statuses.items())), **latency((floor, overall)),
           "window_start": iso_utc(lo), "window_minutes": seconds / 60.0}
    endpoints.sort(key=lambda e: (-e["request_count"], e["endpoint"], e["method"]))
    slowest = sorted((e for e in endpoints if e["request_count"]),
                     key=lambda e: -(e["p95_response_time_ms"] or e["avg_response_time_ms"]))
    failing = sorted((e for e in endpoints if e["error_count"]),
                     key=lambda e: (-e["error_count"], -e["error_rate_percent"]))
    return {"api": api, "endpoints": endpoints, "slowest_endpoints": slowest[:top],
            "most_failing_endpoints": failing[:top]}


_SYSTEM_AGGREGATES = (
    ("samples", "count(*)"),
    ("avg_cpu_percent", "avg(cpu_percent)"), ("max_cpu_percent", "max(cpu_percent)"),
    ("avg_memory_percent", "avg(memory_percent)"), ("max_memory_percent", "max(memory_percent)"),
    ("min_memory_available_mb", "min(memory_available_mb)"),
    ("avg_disk_usage_percent", "avg(disk_usage_percent)"),
    ("max_disk_usage_percent", "max(disk_usage_percent)"),
    ("min_disk_free_gb", "min(disk_free_gb)"),
    ("network_bytes_sent", "max(network_bytes_sent) - min(network_bytes_sent)"),
    ("network_bytes_recv", "max(network_bytes_recv) - min(network_bytes_recv)"),
    ("avg_active_connections", "avg(active_connections)"),
    ("max_active_connections", "max(active_connections)"),
    ("max_process_rss_mb", "max(process_rss_mb)"),
    ("max_process_cpu_percent", "max(process_cpu_percent)"),
    ("max_kit_dropped", "max(kit_dropped)"), ("max_kit_flush_ms", "max(kit_flush_ms)"),
    ("max_kit_backend_errors", "max(kit_backend_errors)"),
    ("last_reading_at", "max(timestamp)"),
)
_SYSTEM_KEYS = tuple(k for k, _ in _SYSTEM_AGGREGATES)
_SYSTEM_SQL = (
    f"SELECT {', '.join(a for _, a in _SYSTEM_AGGREGATES)}"
    # Rows arrive in time order, so a rowid range from the first row in the window is
    # read sequentially (4x cheaper than index lookups); `+` keeps the index out of it.
    " FROM system_metrics WHERE id >= (SELECT coalesce(min(id), 0) FROM system_metrics"
    " WHERE timestamp >= ? AND timestamp < ?) AND +timestamp >= ? AND +timestamp < ?"
)


def system_stats(db: Database, start: float, end: float | None = None) -> dict[str, Any]:
    """Averages and maxima of the system readings in the window (network: bytes in it)."""
    lo, hi = bounds(start, end)
    with _db(db) as conn:
        edges = (iso_utc(lo), _iso_end(hi))
        row = conn.execute(_SYSTEM_SQL, edges + edges).fetchone()
    return dict(zip(_SYSTEM_KEYS, row, strict=True))


def _iso_end(hi: int) -> str:
    return "9999" if hi >= FOREVER else iso_utc(hi)


def summary(db: Database, hours: float = 24.0, *, now: float | None = None, kind: str = "http",
            top: int = 5) -> dict[str, Any]:
    """Everything ``get_metrics_summary(hours=...)`` reports, for the last ``hours``."""
    end = None if now is None else now
    start = (time.time() if now is None else now) - hours * 3600.0
    out = api_stats(db, start, end, kind=kind, top=top)
    out["system"] = system_stats(db, start, end)
    out["period_hours"] = hours
    out["window_start"] = out["api"]["window_start"]
    out["generated_at"] = iso_utc(time.time())
    return out


def recent_system_metrics(db: Database, minutes: float = 60.0, *, now: float | None = None,
                          limit: int = 10_000) -> list[dict[str, Any]]:
    """Stored system readings of the last ``minutes``, oldest first, as dicts."""
    since = iso_utc((time.time() if now is None else now) - minutes * 60.0)
    with _db(db) as conn:
        cur = conn.execute("SELECT * FROM system_metrics WHERE timestamp >= ?"
                           " ORDER BY timestamp LIMIT ?", (since, limit))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def app_metrics_latest(db: Database, start: float, end: float | None = None) -> dict[str, float]:
    """Each application metric by name: a gauge's latest value, a counter's sum in the window."""
    since, until = iso_utc(start), "9999" if end is None else iso_utc(end)
    with _db(db) as conn:
        # SQLite takes the bare column `value` from the row holding max(timestamp).
        gauges = conn.execute("SELECT name, value, max(timestamp) FROM app_metrics WHERE kind ="
                              " 'gauge' AND timestamp >= ? AND timestamp < ? GROUP BY name",
                              (since, until)).fetchall()
        counters = conn.execute("SELECT name, sum(value) FROM app_metrics WHERE kind = 'counter'"
                                " AND timestamp >= ? AND timestamp < ? GROUP BY name",
                                (since, until)).fetchall()
    out = {name: value for name, value, _ in gauges}
    out.update(dict(counters))
    return out


def app_metric_series(db: Database, name: str, start: float,
                      end: float | None = None) -> list[tuple[str, float]]:
    """(timestamp, value) of one application metric, oldest first."""
    until = "9999" if end is None else iso_utc(end)
    with _db(db) as conn:
        return conn.execute("SELECT timestamp, value FROM app_metrics WHERE name = ? AND"
                            " timestamp >= ? AND timestamp < ? ORDER BY timestamp",
                            (name, iso_utc(start), until)).fetchall()


def timeseries(db: Database, start: float, end: float | None = None, *, kind: str = "http",
               name: str | None = None, step: int | None = None) -> list[dict[str, Any]]:
    """Points of ``step`` seconds (60, 600, 3600 or 21600; by default chosen for ~220 points or
    fewer): request count, errors, average, max and p95 latency, optionally for one route.

    Points are aligned to their step, so the first one may start before ``start``.
    """
    lo, hi = bounds(start, end)
    if step is None:
        span = covered(lo, hi)
        step = next((p for p, limit in _STEPS if span <= limit), 21600)
    if step not in (60, *COARSE_PERIODS):
        raise ValueError(f"step must be 60, 600, 3600 or 21600 seconds, not {step!r}")
    lo -= lo % step
    where = "kind = ?" + (" AND name = ?" if name is not None else "")
    keys: tuple[Any, ...] = (kind,) if name is None else (kind, name)
    if step == 60:
        sql = (f"SELECT minute, {SUMS} FROM metric_rollups WHERE minute >= ? AND minute < ?"
               f" AND {where} GROUP BY minute ORDER BY minute")
        args: tuple[Any, ...] = (lo, hi, *keys)
    else:
        sql = (f"SELECT start, {SUMS} FROM metric_rollups_coarse WHERE period = ?"
               f" AND start >= ? AND start < ? AND {where} GROUP BY start ORDER BY start")
        args = (step, lo, hi, *keys)
    hist_sql = ("SELECT start, hist FROM metric_histograms WHERE period = ? AND start >= ?"
                f" AND start < ? AND {where}")
    with _db(db) as conn:
        rows = conn.execute(sql, args).fetchall()
        blobs: dict[int, list[bytes]] = {}
        for t, blob in conn.execute(hist_sql, (step, lo, hi, *keys)):
            blobs.setdefault(t, []).append(blob)
    points = []
    for t, c, e, total_ms, max_ms, *_ in rows:
        group = blobs.get(t, [])
        base = min((hist_low(b) for b in group), default=0)
        p95 = latency((base, sum(hist_value(b, base) for b in group)))[PCT_KEYS[1]]
        points.append({"time": t, "request_count": c, "error_count": e,
                       "avg_response_time_ms": total_ms / c if c else None,
                       "max_response_time_ms": max_ms, "p95_response_time_ms": p95})
    return points
