"""What one metrics collection cycle costs: psutil readings, kit health, app gauges, one append.

Times ``MetricsCollector.collect_once()`` against the real psutil on this
machine, with and without counting sockets (from ``/proc/net/sockstat`` on
Linux), with ten application gauges and counters set. The legacy way of counting
sockets, ``len(psutil.net_connections('inet'))``, is timed alongside because
its cost grows with the number of sockets on the host. Afterwards every
reading must have reached ``system_metrics`` and look plausible (percentages
in 0..100, network byte counters non-decreasing).
"""

from __future__ import annotations

import math
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from typing import Any

import psutil
from _common import parser, print_table, write_json

import instrument
from instrument.metrics_collector import MetricsCollector


def _time(fn: Any, cycles: int) -> dict[str, float]:
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(cycles):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpu.append((time.thread_time() - c0) * 1000.0)
        wall.append((time.perf_counter() - w0) * 1000.0)
    wall.sort()
    return {"median_ms": statistics.median(wall),
            "p95_ms": wall[max(0, math.ceil(len(wall) * 0.95) - 1)], "max_ms": wall[-1],
            "cpu_median_ms": statistics.median(cpu), "cycles": cycles}


def _check(path: str, expected: int) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT cpu_percent, memory_percent, disk_usage_percent,"
                        " network_bytes_sent, network_bytes_recv, process_rss_mb"
                        " FROM system_metrics ORDER BY id").fetchall()
    apps = conn.execute("SELECT count(*) FROM app_metrics").fetchone()[0]
    conn.close()
    in_range = all(0.0 <= v <= 100.0 for r in rows for v in r[:3] if v is not None)
    sent = [r[3] for r in rows]
    recv = [r[4] for r in rows]
    monotonic = all(a <= b for a, b in pairwise(sent)) and all(
        a <= b for a, b in pairwise(recv))
    return {"rows": len(rows), "expected_rows": expected, "app_rows": apps,
            "percentages_in_range": in_range, "network_non_decreasing": monotonic,
            "rss_positive": all((r[5] or 0) > 0 for r in rows)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=None)
    args = p.parse_args(argv)
    cycles = args.cycles or (20 if args.quick else 500)
    tmp = tempfile.mkdtemp(prefix="instrument-bench-")
    path = os.path.join(tmp, "metrics.db")
    instrument.configure(metrics_db=path, flush_interval=0.2)
    results: dict[str, Any] = {}
    for label, connections in (("without connections", False), ("with connections", True)):
        collector = MetricsCollector(connections=connections, interval=3600)
        for i in range(5):
            collector.set_gauge(f"gauge_{i}", i)
            collector.increment(f"counter_{i}", i + 1)
        collector.collect_once()  # warm-up: imports, psutil's first reads

        def cycle(c: MetricsCollector = collector) -> None:
            c.increment("counter_0")
            c.collect_once()

        results[label] = _time(cycle, cycles)
    legacy_cycles = max(3, cycles // 20)
    results["psutil.net_connections alone"] = _time(
        lambda: len(psutil.net_connections("inet")), legacy_cycles)
    sockets = len(psutil.net_connections("inet"))
    instrument.flush(10.0)
    checks = _check(path, 2 * (cycles + 1))
    instrument.shutdown(5.0)
    print_table(["variant", "median ms", "p95 ms", "max ms", "CPU median ms", "cycles"],
                [(k, v["median_ms"], v["p95_ms"], v["max_ms"], v["cpu_median_ms"], v["cycles"])
                 for k, v in results.items()],
                title=f"one collection cycle ({sockets} inet sockets on this host)")
    print_table(["check", "value"], list(checks.items()))
    payload = {"results": results, "checks": checks, "sockets": sockets,
               "target_ms": 5.0, "quick": args.quick}
    write_json(args.json, {"benchmark": "collector", **payload})
    for name in os.listdir(tmp):
        os.remove(os.path.join(tmp, name))
    os.rmdir(tmp)
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
