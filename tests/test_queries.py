"""Summaries from the rollups agree with numbers computed independently from the raw rows.

Requests go through the real recorder, flusher and SQLite backend, spread over
30 hours so that windows use every tier (hours, 10-minute blocks, minutes).
The checks recompute everything from ``api_metrics`` / ``system_metrics`` /
``app_metrics`` rows in Python; percentiles are compared with the exact
nearest-rank percentile of the recorded latencies (the histogram has 16
buckets per doubling, so the estimate is within 2.2 %; the bound asserted is 5 %).
"""

from __future__ import annotations

import math
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import instrument
from instrument import queries
from instrument.backends.sqlite import SQLiteBackend, connect
from instrument.core.batch import iso_utc
from instrument.core.runtime import runtime
from instrument.storage import tiers as _tiers
from instrument.storage.sqlite_schema import MIGRATIONS

HOUR = 3600.0
DISTRIBUTIONS: dict[str, Callable[[random.Random], float]] = {
    "/lognormal": lambda r: r.lognormvariate(math.log(40), 0.6),
    "/bimodal": lambda r: max(0.1, r.gauss(5, 1)) if r.random() < 0.8 else r.gauss(300, 40),
    "/pareto": lambda r: 2 * r.paretovariate(1.5),
    "/uniform": lambda r: r.uniform(1, 1000),
    "/submillisecond": lambda r: r.expovariate(1 / 0.3),
}


def record_requests(n_per_route: int = 4000, span_hours: float = 30.0, seed: int = 11) -> None:
    """Record requests through the kit, spread evenly at random over the last ``span_hours``."""
    rng = random.Random(seed)
    base = time.perf_counter()
    add = runtime.recorder.add
    for i in range(n_per_route):
        for route, draw in DISTRIBUTIONS.items():
            ms = draw(rng)
            t0 = base - rng.uniform(0, span_hours * HOUR)
            u = rng.random()
            status, exc = ((500, None) if u < 0.02 else (404, None) if u < 0.05
                           else (500, ValueError) if u < 0.06 else (200, None))
            add(("http", t0, t0 + ms / 1000.0, t0 + ms / 2000.0, route,
                 "POST" if route == "/uniform" else "GET", status, rng.randrange(0, 500),
                 rng.randrange(0, 5000), exc, False))
        if i % 1000 == 999:
            assert instrument.flush(10)
    assert instrument.flush(10)


def raw(db: Path, lo: str, hi: str = "9999") -> list[tuple[Any, ...]]:
    """(endpoint, method, status, ms, error_count, req bytes, resp bytes) rows in [lo, hi)."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT endpoint, method, status_code, response_time_ms, error_count,"
            " request_size_bytes, response_size_bytes FROM api_metrics"
            " WHERE timestamp >= ? AND timestamp < ?", (lo, hi)).fetchall()
    finally:
        conn.close()


def exact(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the definition the histogram estimate follows."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * q / 100.0)) - 1]


def check_against_raw(result: dict[str, Any], rows: list[tuple[Any, ...]]) -> None:
    """Assert every figure of api_stats/summary equals the same figure from raw rows."""
    api = result["api"]
    ms = [r[3] for r in rows]
    assert api["request_count"] == len(rows) > 0
    assert api["error_count"] == sum(r[4] for r in rows)
    assert api["client_error_count"] == sum(1 for r in rows if 400 <= r[2] < 500)
    assert api["error_rate_percent"] == pytest.approx(100 * api["error_count"] / len(rows))
    assert api["avg_response_time_ms"] == pytest.approx(sum(ms) / len(ms))
    assert api["max_response_time_ms"] == pytest.approx(max(ms))
    assert api["request_bytes"] == sum(r[5] for r in rows)
    assert api["response_bytes"] == sum(r[6] for r in rows)
    statuses: dict[int, int] = {}
    for r in rows:
        statuses[r[2]] = statuses.get(r[2], 0) + 1
    assert api["status_codes"] == dict(sorted(statuses.items()))
    for q in (50, 95, 99):
        assert api[f"p{q}_response_time_ms"] == pytest.approx(exact(ms, q), rel=0.05)
    by_route: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for r in rows:
        by_route.setdefault((r[0], r[1]), []).append(r)
    assert {(e["endpoint"], e["method"]) for e in result["endpoints"]} == set(by_route)
    for e in result["endpoints"]:
        mine = by_route[(e["endpoint"], e["method"])]
        route_ms = [r[3] for r in mine]
        assert e["request_count"] == len(mine)
        assert e["error_count"] == sum(r[4] for r in mine)
        assert e["avg_response_time_ms"] == pytest.approx(sum(route_ms) / len(route_ms))
        assert e["max_response_time_ms"] == pytest.approx(max(route_ms))
        assert e["p95_response_time_ms"] == pytest.approx(exact(route_ms, 95), rel=0.05)


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding 30 hours of requests from five latency distributions (read-only)."""
    path = tmp_path_factory.mktemp("day") / "metrics.db"
    instrument.configure(metrics_db=str(path), flush_interval=0.2)
    record_requests()
    instrument.shutdown(5)
    return path


def test_24_hour_summary_matches_the_raw_rows(day: Path) -> None:
    """Counts, errors, bytes, statuses, latencies and every endpoint agree with api_metrics."""
    result = queries.summary(day, hours=24)
    check_against_raw(result, raw(day, result["window_start"]))
    window = result["api"]["window_minutes"]
    assert 24 * 60 <= window <= 24 * 60 + 2
    assert result["api"]["requests_per_minute"] == pytest.approx(
        result["api"]["request_count"] / window)


def test_explicit_window_with_ragged_edges_uses_every_tier(day: Path) -> None:
    """A window starting and ending mid-hour and mid-block is exact, read from all tiers."""
    now = time.time()
    start, end = now - 26 * HOUR - 7 * 60 - 17, now - 2 * HOUR - 13 * 60 - 41
    lo, hi = _tiers.bounds(start, end)
    assert {period for period, _, _ in _tiers.plan(lo, hi)} == {60, 600, 3600, 21600}
    result = queries.api_stats(day, start, end)
    check_against_raw(result, raw(day, iso_utc(lo), iso_utc(hi)))
    assert result["api"]["window_minutes"] == (hi - lo) / 60


def test_one_route_reads_the_same_row_as_the_whole_table(day: Path) -> None:
    """``route=``: only that route's rollups and histograms are read (a route's page), and
    its row is the one the all-routes table holds, over every tier."""
    now = time.time()
    start, end = now - 26 * HOUR - 7 * 60 - 17, now - 2 * HOUR - 13 * 60 - 41
    everything = queries.api_stats(day, start, end)["endpoints"]
    assert len({e["endpoint"] for e in everything}) == len(DISTRIBUTIONS)
    for route in DISTRIBUTIONS:
        alone = queries.api_stats(day, start, end, route=route)
        assert alone["endpoints"] == [e for e in everything if e["endpoint"] == route]
        assert alone["api"]["request_count"] == alone["endpoints"][0]["request_count"] > 0
    assert queries.api_stats(day, start, end, route="/never")["endpoints"] == []


@pytest.mark.parametrize("route", sorted(DISTRIBUTIONS))
def test_percentiles_within_5_percent_per_distribution(day: Path, route: str) -> None:
    """p50/p95/p99 of each latency distribution are within 5 % of the exact values."""
    result = queries.api_stats(day, time.time() - 31 * HOUR)
    (entry,) = [e for e in result["endpoints"] if e["endpoint"] == route]
    ms = [r[3] for r in raw(day, "0") if r[0] == route]
    for q in (50, 95, 99):
        estimate, truth = entry[f"p{q}_response_time_ms"], exact(ms, q)
        assert abs(estimate / truth - 1) < 0.05, (route, q, estimate, truth)


def test_slowest_and_most_failing_endpoints_are_ranked(day: Path) -> None:
    """Slowest endpoints are by p95, most failing by error count, both highest first."""
    result = queries.summary(day, hours=30, top=3)
    p95s = [e["p95_response_time_ms"] for e in result["slowest_endpoints"]]
    assert len(p95s) == 3 and p95s == sorted(p95s, reverse=True)
    assert p95s[0] == max(e["p95_response_time_ms"] for e in result["endpoints"])
    errors = [e["error_count"] for e in result["most_failing_endpoints"]]
    assert errors == sorted(errors, reverse=True) and errors[0] == max(
        e["error_count"] for e in result["endpoints"])


def test_timeseries_points_add_up_to_the_window(day: Path) -> None:
    """Per-step points sum to the same totals as the window they cover."""
    now = time.time()
    for step, start in ((60, now - 2 * HOUR), (600, now - 20 * HOUR), (3600, now - 30 * HOUR),
                        (21600, now - 30 * HOUR)):
        points = queries.timeseries(day, start, step=step)
        first = points[0]["time"]
        assert all(p["time"] % step == 0 for p in points)
        rows = raw(day, iso_utc(first))
        assert sum(p["request_count"] for p in points) == len(rows)
        assert sum(p["error_count"] for p in points) == sum(r[4] for r in rows)
        assert all(p["p95_response_time_ms"] > 0 for p in points)


def test_empty_window_reports_zero_and_no_latency(db_path: Path) -> None:
    """Without requests: zero counts and rates, None latencies, no endpoints."""
    connect(str(db_path)).close()
    result = queries.summary(db_path, hours=1)
    api = result["api"]
    assert (api["request_count"], api["requests_per_minute"], api["error_rate_percent"]) \
        == (0, 0.0, 0.0)
    assert api["avg_response_time_ms"] is None and api["p95_response_time_ms"] is None
    assert result["endpoints"] == [] and api["status_codes"] == {}
    assert result["system"]["samples"] == 0


def test_system_stats_match_the_stored_readings(db_path: Path) -> None:
    """Averages, maxima, minima and network deltas equal those of the rows in the window."""
    instrument.configure(metrics_db=str(db_path))
    rng = random.Random(5)
    now = time.time()
    readings = []
    for i in range(120):  # one every 30 s for the last hour, plus old ones outside the window
        ts = now - 3 * HOUR + i * 90
        values = {"cpu_percent": rng.uniform(0, 100), "memory_percent": rng.uniform(20, 90),
                  "memory_available_mb": rng.uniform(100, 900),
                  "disk_usage_percent": rng.uniform(50, 60), "disk_free_gb": rng.uniform(5, 9),
                  "network_bytes_sent": 1000 * i, "network_bytes_recv": 3000 * i,
                  "active_connections": rng.randrange(1, 50),
                  "process_rss_mb": rng.uniform(30, 60), "kit_dropped": i // 10, "pid": 7}
        readings.append((ts, values))
        runtime.recorder.add(("system", ts, values))
    assert instrument.flush(5)
    start = now - HOUR
    stats = queries.system_stats(db_path, start)
    lo = int(start // 60) * 60
    inside = [v for ts, v in readings if iso_utc(ts) >= iso_utc(lo)]
    assert stats["samples"] == len(inside) > 0
    cpu = [v["cpu_percent"] for v in inside]
    assert stats["avg_cpu_percent"] == pytest.approx(sum(cpu) / len(cpu))
    assert stats["max_cpu_percent"] == pytest.approx(max(cpu))
    assert stats["min_disk_free_gb"] == pytest.approx(min(v["disk_free_gb"] for v in inside))
    sent = [v["network_bytes_sent"] for v in inside]
    assert stats["network_bytes_sent"] == max(sent) - min(sent)
    assert stats["max_active_connections"] == max(v["active_connections"] for v in inside)
    assert stats["max_kit_dropped"] == max(v["kit_dropped"] for v in inside)
    recent = queries.recent_system_metrics(db_path, minutes=60, now=now)
    assert [r["cpu_percent"] for r in recent] == pytest.approx(
        [v["cpu_percent"] for ts, v in readings if iso_utc(ts) >= iso_utc(now - HOUR)])


def test_app_metrics_latest_gauges_and_counter_sums(db_path: Path) -> None:
    """Gauges report their newest value, counters their sum over the window, by name."""
    instrument.configure(metrics_db=str(db_path))
    now = time.time()
    samples = [("app", now - 7200, "queue", "gauge", 90.0, 1), ("app", now - 50, "queue", "gauge",
               4.0, 1), ("app", now - 40, "queue", "gauge", 6.0, 2),
               ("app", now - 7200, "sent", "counter", 100.0, 1),
               ("app", now - 30, "sent", "counter", 3.0, 1),
               ("app", now - 20, "sent", "counter", 4.0, 2)]
    for s in samples:
        runtime.recorder.add(s)
    assert instrument.flush(5)
    assert queries.app_metrics_latest(db_path, now - HOUR) == {"queue": 6.0, "sent": 7.0}
    series = queries.app_metric_series(db_path, "queue", now - 3 * HOUR)
    assert [v for _, v in series] == [90.0, 4.0, 6.0]


def test_migration_2_backfills_the_coarse_tiers(tmp_path: Path) -> None:
    """A version-1 store gains 10-minute, hourly and 6-hour sums of its minute rollups."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    rows = [(m * 60, "http", "/a", "GET", 200, 2, 1, 10.0, 7.0, 1.0, 5, 50) for m in range(0, 130)]
    conn.executemany("INSERT INTO metric_rollups VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.commit()
    conn.close()
    conn = connect(str(path))
    got = dict(((p, s), (c, e)) for p, s, c, e in conn.execute(
        "SELECT period, start, count, errors FROM metric_rollups_coarse"))
    conn.close()
    assert got[(3600, 0)] == got[(3600, 3600)] == (120, 60) and got[(3600, 7200)] == (20, 10)
    assert got[(600, 0)] == (20, 10) and got[(600, 7200)] == (20, 10)
    assert sum(c for (p, _), (c, _) in got.items() if p == 600) == 260
    assert got[(21600, 0)] == (260, 130)


def test_concurrent_writers_merge_one_histogram(db_path: Path) -> None:
    """Two processes' batches for the same minute and route add up, histograms included."""
    from instrument.core.aggregate import Aggregator

    first, second = SQLiteBackend(str(db_path)), SQLiteBackend(str(db_path))
    t0 = time.perf_counter()
    batch_a = Aggregator().aggregate([("http", t0, t0 + 0.010, 0, "/r", "GET", 200, 1, 1, None,
                                       False)] * 30)
    batch_b = Aggregator().aggregate([("http", t0, t0 + 0.200, 0, "/r", "GET", 200, 1, 1, None,
                                       False)] * 10)
    first.write(batch_a)
    second.write(batch_b)
    first.close()
    second.close()
    api = queries.api_stats(db_path, time.time() - 600)["api"]
    assert api["request_count"] == 40
    assert api["p50_response_time_ms"] == pytest.approx(10.0, rel=0.03)
    assert api["p95_response_time_ms"] == pytest.approx(200.0, rel=0.03)


def test_retention_expires_application_rows_and_tiers(db_path: Path) -> None:
    """Rows and tier entries older than the retention period are deleted, newer ones kept."""
    instrument.configure(metrics_db=str(db_path), retention_days=1)
    t_old = time.perf_counter() - 3 * 86400
    runtime.recorder.add(("http", t_old, t_old + 0.01, 0, "/old", "GET", 200, 0, 0, None, False))
    runtime.recorder.add(("app", time.time() - 3 * 86400, "queue", "gauge", 1.0, 1))
    runtime.recorder.add(("app", time.time(), "queue", "gauge", 2.0, 1))
    assert instrument.flush(5)
    backend = runtime.backends[0]
    backend.apply_retention()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT value FROM app_metrics").fetchall() == [(2.0,)]
        assert conn.execute("SELECT count(*) FROM metric_rollups_coarse").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM metric_histograms").fetchone()[0] == 0
    finally:
        conn.close()


def test_queries_accept_a_path_or_a_connection(day: Path, tmp_path: Path) -> None:
    """A path is opened read-only for the call; a connection is used as given."""
    by_path = queries.api_stats(str(day), time.time() - HOUR)["api"]["request_count"]
    conn = sqlite3.connect(day)
    by_conn = queries.api_stats(conn, time.time() - HOUR)["api"]["request_count"]
    conn.close()
    assert by_path == by_conn > 0
    with pytest.raises(sqlite3.OperationalError):
        queries.api_stats(tmp_path / "missing.db", 0.0)
