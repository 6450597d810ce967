"""How long ``get_metrics_summary(hours=24)`` takes over a day of 10 million requests.

The database is generated here: 20 routes with their own log-normal latency,
error rate and share of traffic, spread over the 24 hours before the run with
a daily swing, plus a system reading and six application gauges every 30 s.
Requests are drawn one by one (so exact percentiles are known), aggregated
per minute in the Aggregator's rollup format and written through the real
``SQLiteBackend.write`` (minute rollups, buckets, hourly tier, histogram
blobs) ten minutes per transaction. ``--raw`` also writes one ``api_metrics``
row per request (slow: ~10 GB-scale work at 10M); ``--quick`` uses 100,000
requests and raw rows, and checks the summary against SQL over the raw rows.

The summary is then timed through ``MetricsCollector(db_path=...)``: the first
call on a fresh connection, then ``--repeat`` calls (median, p95, max; wall
clock and the calling thread's CPU time, which a busy machine disturbs less).
"""

from __future__ import annotations

import gc
import math
import os
import random
import statistics
import sys
import tempfile
import time
from array import array
from typing import Any

from _common import parser, print_table, write_json

from instrument.backends.sqlite import SQLiteBackend
from instrument.core.batch import Batch, iso_utc
from instrument.core.histogram import PER_DOUBLING
from instrument.metrics_collector import MetricsCollector
from instrument.queries import summary

ROUTES = 20
_MIN_INDEX = -10 * PER_DOUBLING


def _routes(rng: random.Random) -> list[tuple[str, str, float, float, float, float]]:
    """(name, method, weight, log-median ms, sigma, error rate) per route."""
    out = []
    for i in range(ROUTES):
        out.append((f"/api/v1/resource{i}/{{id}}", "POST" if i % 4 == 0 else "GET",
                    1.0 / (i + 1), math.log(4.0 * 1.25 ** i), 0.35 + 0.04 * (i % 7),
                    0.002 * (i % 5)))
    return out


def generate(path: str, requests: int, *, raw: bool, seed: int = 7,
             end: float | None = None) -> dict[str, Any]:
    """Write ``requests`` requests spread over the 24 h before ``end``; return ground truth."""
    rng = random.Random(seed)
    end = time.time() if end is None else end
    start = end - 86400.0
    routes = _routes(rng)
    total_w = sum(r[2] for r in routes)
    # Traffic per minute follows a daily swing (x0.4 at night, x1.6 at the peak).
    minutes = 1440
    shape = [1.0 + 0.6 * math.sin(2 * math.pi * m / minutes) for m in range(minutes)]
    scale = requests / sum(shape)
    backend = SQLiteBackend(path, retention_days=30)
    latencies = array("d")
    errors = 0
    written = 0
    lognorm, rand, log2, floor = rng.lognormvariate, rng.random, math.log2, math.floor
    pending = Batch()
    started = time.perf_counter()
    for m in range(minutes):
        n_minute = round(scale * sum(shape[:m + 1])) - round(scale * sum(shape[:m]))
        t_lo = start + m * 60.0
        minute_key = int(t_lo // 60) * 60
        for name, method, weight, mu, sigma, err_rate in routes:
            n = round(n_minute * weight / total_w)
            for _ in range(n):
                ms = lognorm(mu, sigma)
                u = rand()
                status = 500 if u < err_rate else (404 if u < err_rate + 0.02 else 200)
                err = 1 if status >= 500 else 0
                key = (minute_key, "http", name, method, status)
                r = pending.rollups.get(key)
                if r is None:
                    r = pending.rollups[key] = [0, 0, 0.0, 0.0, 0.0, 0, 0, {}]
                r[0] += 1
                r[1] += err
                r[2] += ms
                if ms > r[3]:
                    r[3] = ms
                r[4] += ms * 0.5
                r[5] += 200
                r[6] += 1500
                b = _MIN_INDEX if ms <= 0.0009765625 else floor(log2(ms) * PER_DOUBLING)
                r[7][b] = r[7].get(b, 0) + 1
                latencies.append(ms)
                errors += err
                if raw:
                    ts = t_lo + rand() * 60.0
                    pending.request_values.extend((iso_utc(ts), name, method, status, ms, 200, 1500,
                                                    err, ms * 0.5, None, 0, os.getpid()))
        for half in (0.0, 30.0):  # a system reading and the app gauges every 30 s
            # Late in each 30 s slot: the 24 h window of a query made some seconds after
            # generation must still hold the oldest reading (one at `start` falls out).
            ts = t_lo + half + 29.0
            pending.other.setdefault("system", []).append(("system", ts, {
                "cpu_percent": 20 + 30 * shape[m] * rand(), "memory_percent": 40 + 10 * rand(),
                "disk_usage_percent": 55.0, "disk_free_gb": 90.0, "network_bytes_sent":
                1000 * (2 * m + (half > 0)), "network_bytes_recv": 3000 * (2 * m + (half > 0)),
                "active_connections": 20 + int(10 * rand()), "pid": 1}))
            for gauge in ("queue_size", "cache_hit_rate", "database_connections",
                          "active_fine_tuning_jobs", "completed_evaluations", "total_api_calls"):
                pending.other.setdefault("app", []).append(("app", ts, gauge, "gauge",
                                                            rand() * 100, 1))
        written += n_minute
        if m % 10 == 9 or m == minutes - 1:
            pending.samples = 1
            backend.write(pending)
            pending = Batch()
    backend.close()
    return {"requests": len(latencies), "errors": errors, "latencies": latencies,
            "end": end, "seconds": time.perf_counter() - started}


def exact_percentile(sorted_values: Any, q: float) -> float:
    """Nearest-rank percentile, the definition the histogram estimate follows."""
    return float(sorted_values[max(1, math.ceil(len(sorted_values) * q / 100.0)) - 1])


def raw_check(path: str) -> dict[str, Any]:
    """Totals and exact p95 straight from the raw rows (quick mode), independent of rollups."""
    import sqlite3

    conn = sqlite3.connect(path)
    count, errors = conn.execute("SELECT count(*), sum(error_count) FROM api_metrics").fetchone()
    values = [r[0] for r in conn.execute(
        "SELECT response_time_ms FROM api_metrics ORDER BY response_time_ms")]
    conn.close()
    return {"count": count, "errors": errors, "p95": exact_percentile(values, 95)}


def time_summary(path: str, repeat: int, json_path: str | None) -> dict[str, Any]:
    """Only the timing part, over a database generated earlier."""
    collector = MetricsCollector(db_path=path)
    collector.get_metrics_summary(hours=24)
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.thread_time()
        collector.get_metrics_summary(hours=24)
        cpu.append((time.thread_time() - c0) * 1000.0)
        wall.append((time.perf_counter() - t0) * 1000.0)
    collector.close()
    wall.sort()
    cpu.sort()
    result = {"summary_median_ms": statistics.median(wall),
              "summary_p95_ms": wall[max(0, math.ceil(len(wall) * 0.95) - 1)],
              "summary_max_ms": wall[-1], "summary_cpu_median_ms": statistics.median(cpu),
              "summary_cpu_p95_ms": cpu[max(0, math.ceil(len(cpu) * 0.95) - 1)],
              "repeat": repeat, "load_average": os.getloadavg()[0]}
    print_table(["measure", "value"], list(result.items()),
                title=f"get_metrics_summary(hours=24) over {path}")
    write_json(json_path, {"benchmark": "summary", "reuse": True, "results": result})
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=None, help="requests to generate")
    p.add_argument("--repeat", type=int, default=None, help="timed summary calls")
    p.add_argument("--raw", action="store_true", help="also write raw api_metrics rows")
    p.add_argument("--db", help="database file (default: a temporary one, deleted)")
    p.add_argument("--reuse", action="store_true",
                   help="time the summary over an existing --db without generating or checking")
    args = p.parse_args(argv)
    if args.reuse:
        if not args.db:
            p.error("--reuse needs --db")
        return time_summary(args.db, args.repeat or 50, args.json)
    requests = args.requests or (100_000 if args.quick else 10_000_000)
    repeat = args.repeat or (5 if args.quick else 50)
    raw = args.raw or args.quick
    tmp = tempfile.mkdtemp(prefix="instrument-bench-")
    path = args.db or os.path.join(tmp, "metrics.db")
    truth = generate(path, requests, raw=raw)
    lat = sorted(truth.pop("latencies"))
    exact_p95 = exact_percentile(lat, 95)
    del lat  # ten million floats: free them (and collect) before anything is timed
    gc.collect()
    checked = summary(path, 24, now=truth["end"])["api"]
    collector = MetricsCollector(db_path=path)
    t0 = time.perf_counter()
    first = collector.get_metrics_summary(hours=24)
    first_ms = (time.perf_counter() - t0) * 1000.0
    times: list[float] = []
    cpu: list[float] = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.thread_time()
        collector.get_metrics_summary(hours=24)
        cpu.append((time.thread_time() - c0) * 1000.0)
        times.append((time.perf_counter() - t0) * 1000.0)
    collector.close()
    times.sort()
    cpu.sort()
    p95 = times[max(0, math.ceil(len(times) * 0.95) - 1)]
    result: dict[str, Any] = {
        "requests_generated": truth["requests"], "generate_seconds": truth["seconds"],
        "db_mb": os.path.getsize(path) / 1e6, "raw_rows": raw,
        "summary_first_ms": first_ms, "summary_median_ms": statistics.median(times),
        "summary_p95_ms": p95, "summary_max_ms": times[-1], "repeat": repeat,
        "summary_cpu_median_ms": statistics.median(cpu),
        "summary_cpu_p95_ms": cpu[max(0, math.ceil(len(cpu) * 0.95) - 1)],
        "load_average": os.getloadavg()[0],
        "checked_request_count": checked["request_count"], "checked_errors": checked["error_count"],
        "expected_errors": truth["errors"], "p95_estimate_ms": checked["p95_response_time_ms"],
        "p95_exact_ms": exact_p95,
        "p95_error_percent": 100.0 * abs(checked["p95_response_time_ms"] - exact_p95) / exact_p95,
        "endpoints": len(first["endpoints"]), "system_samples": first["system"]["samples"],
    }
    if raw:
        result["raw"] = raw_check(path)
    print_table(["measure", "value"], [(k, v) for k, v in result.items() if k != "raw"],
                title=f"get_metrics_summary(hours=24) over {truth['requests']:,} requests")
    write_json(args.json, {"benchmark": "summary", "quick": args.quick, "results": result})
    if not args.db:
        for name in os.listdir(tmp):
            os.remove(os.path.join(tmp, name))
        os.rmdir(tmp)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
