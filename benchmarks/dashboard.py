"""Dashboard API response times over a week of 10 million requests, and the page's weight.

The database is generated here: 20 routes with their own log-normal latency,
error share and traffic share, spread over the 7 days before the run with a
daily swing, written through the real ``SQLiteBackend.write`` an hour per
transaction (minute rollups, buckets, hourly tier, histogram blobs; no raw
rows, which the dashboard never reads), plus one system reading every 30 s.
Requests are drawn per route and minute as histogram bucket counts, so
generation is fast; ``--db PATH`` keeps the file and reuses it next time.

Every endpoint the page calls is then timed over real HTTP against the
standalone server (``instrument dashboard``) for each range of the page's
picker: the first call (cold caches) and ``--repeat`` more (median, p95, max),
the window moving with the clock as the page's does. Target: p95 under 25 ms
for the summary and every time series (the seed promises 100 ms). Each case is
also run in process with the CPU time of the handler alone (``cpu p95``), the
figure to trust when other work shares the machine.

Run: ``python benchmarks/dashboard.py [--quick] [--db PATH] [--json PATH]``.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import statistics
import tempfile
import threading
import time
from typing import Any
from urllib.parse import urlencode

import requests
from _common import parser, print_table, write_json

from instrument.backends.sqlite import SQLiteBackend
from instrument.core.batch import Batch
from instrument.core.histogram import PER_DOUBLING
from instrument.dashboard._app import _ASSETS, Dashboard
from instrument.dashboard._http import Request
from instrument.dashboard.server import make_dashboard_server

TARGET_MS = 25.0
TOKEN = "benchmark-token-0123456789"
# (range label, seconds, step): the page's picker.
RANGES = (("15m", 900, 60), ("1h", 3600, 60), ("6h", 21600, 600), ("24h", 86400, 3600),
          ("7d", 604800, 3600))
SERIES = "rate,error_rate,latency_p50,latency_p95,latency_p99"


def _routes() -> list[tuple[str, str, float, float, float, float]]:
    """(name, method, weight, median ms, 5xx share, 404 share) per route."""
    return [(f"/api/v1/resource{i}/{{id}}", "POST" if i % 4 == 0 else "GET", 1.0 / (i + 1),
             4.0 * 1.25 ** i, 0.002 * (i % 5), 0.02) for i in range(20)]


def _cumulative(median: float) -> tuple[list[int], list[float]]:
    center = math.log2(median) * PER_DOUBLING
    idx = list(range(int(center - 3 * PER_DOUBLING), int(center + 3 * PER_DOUBLING)))
    sigma = 0.6 / math.log(2) * PER_DOUBLING
    cum, total = [], 0.0
    for i in idx:
        total += math.exp(-((i + 0.5 - center) ** 2) / (2 * sigma * sigma))
        cum.append(total)
    return idx, cum


def generate(path: str, requests_total: int, days: int, seed: int = 7) -> dict[str, Any]:
    """Write the rollups of ``requests_total`` requests and ``days`` of system readings."""
    rng = random.Random(seed)
    end = int(time.time() // 60) * 60
    minutes = days * 1440
    start = end - minutes * 60
    routes = _routes()
    weights = sum(r[2] for r in routes)
    shapes = {r[0]: _cumulative(r[3]) for r in routes}
    per_minute = requests_total / minutes
    backend = SQLiteBackend(path, retention_days=days + 1)
    written = 0
    batch = Batch()
    started = time.perf_counter()
    for m in range(minutes):
        minute = start + m * 60
        n = per_minute * (1.0 + 0.5 * math.sin(2 * math.pi * (m % 1440) / 1440))
        for name, method, weight, _median, err, missing in routes:
            count = int(n * weight / weights + rng.random())
            if not count:
                continue
            idx, cum = shapes[name]
            n500 = int(count * err + rng.random())
            n404 = int(count * missing + rng.random())
            for status, k in ((200, count - n500 - n404), (404, n404), (500, n500)):
                if k <= 0:
                    continue
                hist: dict[int, int] = {}
                for b in rng.choices(idx, cum_weights=cum, k=k):
                    hist[b] = hist.get(b, 0) + 1
                sum_ms = sum(2 ** ((b + 0.5) / PER_DOUBLING) * c for b, c in hist.items())
                max_ms = 2 ** ((max(hist) + 1) / PER_DOUBLING)
                batch.rollups[(minute, "http", name, method, status)] = [
                    k, k if status >= 500 else 0, sum_ms, max_ms, sum_ms * 0.7, 120 * k,
                    1800 * k, hist]
                written += k
        for s in (0, 30):
            i = m * 2 + s // 30
            batch.other.setdefault("system", []).append(("system", minute + s, {
                "cpu_percent": 20 + 15 * math.sin(i / 300) + rng.random() * 5,
                "memory_percent": 55 + 5 * math.sin(i / 900), "memory_used_mb": 4000.0,
                "memory_available_mb": 4000.0, "disk_usage_percent": 61.0 + i / 1e5,
                "disk_free_gb": 80.0, "network_bytes_sent": 1000 * i * 30,
                "network_bytes_recv": 3000 * i * 30, "active_connections": 20 + i % 9}))
        if m % 60 == 59 or m == minutes - 1:
            backend.write(batch)
            batch = Batch()
    backend.close()
    return {"requests": written, "days": days, "seconds": time.perf_counter() - started,
            "end": end}


def _timed(session: requests.Session, url: str, params: dict[str, Any]) -> float:
    t = time.perf_counter()
    r = session.get(url, params=params, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    elapsed = (time.perf_counter() - t) * 1000.0
    if r.status_code != 200:
        raise RuntimeError(f"{r.url} -> {r.status_code}: {r.text[:200]}")
    return elapsed


def _cpu(dashboard: Dashboard, path: str, params: dict[str, Any]) -> float:
    """CPU milliseconds the handler itself takes (in process, no HTTP): immune to a busy box."""
    request = Request("GET", "/api/v1/monitoring/" + path, urlencode(params),
                      {"authorization": f"Bearer {TOKEN}"})
    t = time.thread_time()
    response = dashboard(request)
    elapsed = (time.thread_time() - t) * 1000.0
    if response.status != 200:
        raise RuntimeError(f"{path} -> {response.status}: {response.body[:200]!r}")
    return elapsed


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def measure(base: str, dashboard: Dashboard, repeat: int) -> list[dict[str, Any]]:
    """Cold and warm timings of every call the page makes, per range."""
    session = requests.Session()
    api = base + "/api/v1/monitoring/"
    out = []
    cases: list[tuple[str, str, str, Any]] = []
    for label, seconds, step in RANGES:
        cases.append(("summary", label, "metrics/summary", lambda s=seconds: {"hours": s / 3600}))
        cases.append(("timeseries", label, "metrics/timeseries",
                      lambda s=seconds, st=step: {"metric": SERIES, "from": time.time() - s,
                                                  "to": time.time(), "step": st}))
        cases.append(("system", label, "metrics/system",
                      lambda s=seconds, st=step: {"from": time.time() - s, "to": time.time(),
                                                  "step": st}))
    cases += [("routes", "24h", "routes", lambda: {"hours": 24}),
              ("alerts", "-", "alerts", lambda: {"limit": 20}),
              ("health", "-", "health", lambda: {})]
    for name, label, path, params in cases:
        cold = _timed(session, api + path, params())
        warm = sorted(_timed(session, api + path, params()) for _ in range(repeat))
        cpu = [_cpu(dashboard, path, params()) for _ in range(repeat)]
        out.append({"endpoint": name, "range": label, "cold_ms": cold,
                    "median_ms": statistics.median(warm), "p95_ms": _p95(warm),
                    "max_ms": warm[-1], "cpu_p95_ms": _p95(cpu),
                    "target": name in ("summary", "timeseries")})
    return out


def page_weight() -> dict[str, int]:
    """Bytes of the page and its assets, as sent and gzipped."""
    from importlib import resources

    files = ["index.html", *sorted(_ASSETS)]
    raw = {f: resources.files("instrument.dashboard").joinpath("static", f).read_bytes()
           for f in files}
    return {"total_bytes": sum(len(b) for b in raw.values()),
            "total_gzip_bytes": sum(len(gzip.compress(b, 9)) for b in raw.values()),
            **{f"{f}_bytes": len(b) for f, b in raw.items()}}


def main() -> int:
    p = parser(__doc__ or "")
    p.add_argument("--db", help="keep the generated file here and reuse it when it matches")
    p.add_argument("--requests", type=int, default=None, help="requests to generate")
    p.add_argument("--repeat", type=int, default=None, help="warm calls per case")
    p.add_argument("--days", type=int, default=7, help="days of history to generate")
    args = p.parse_args()
    total = args.requests or (100_000 if args.quick else 10_000_000)
    days = args.days
    repeat = args.repeat or (5 if args.quick else 40)
    tmp = None
    path = args.db
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="instrument-dash-bench-")
        path = os.path.join(tmp.name, "metrics.db")
    meta_path = path + ".meta.json"
    meta: dict[str, Any] | None = None
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
        if (meta.get("requests_asked") != total or meta.get("days") != days
                or time.time() - meta["end"] > 3600):
            meta = None  # stale: the windows would miss most of it
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
    if meta is None:
        print(f"generating {total:,} requests over {days} days into {path} ...", flush=True)
        meta = {**generate(path, total, days), "requests_asked": total}
        with open(meta_path, "w") as fh:
            json.dump(meta, fh)
        print(f"  {meta['requests']:,} requests in {meta['seconds']:.1f} s, "
              f"{os.path.getsize(path) / 1e6:.0f} MB", flush=True)
    dashboard = Dashboard(path, token=TOKEN)
    server = make_dashboard_server(dashboard, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        rows = measure(server.url[: -len("/monitoring")], dashboard, repeat)
    finally:
        server.shutdown()
        server.server_close()
        dashboard.close()
        if tmp is not None:
            tmp.cleanup()
    print_table(["endpoint", "range", "cold ms", "median ms", "p95 ms", "max ms",
                 "cpu p95 ms", "target"],
                [[r["endpoint"], r["range"], r["cold_ms"], r["median_ms"], r["p95_ms"],
                  r["max_ms"], r["cpu_p95_ms"], ("ok" if r["p95_ms"] < TARGET_MS else "MISSED")
                  if r["target"] else ""] for r in rows],
                title=f"API over HTTP, {meta['requests']:,} requests / {days} days, "
                      f"{repeat} warm calls each (target p95 < {TARGET_MS:g} ms)")
    weight = page_weight()
    print_table(["page", "bytes", "gzip bytes"],
                [["index + js + css + icon", weight["total_bytes"], weight["total_gzip_bytes"]]],
                title="Page weight (no third-party assets)")
    missed = [r for r in rows if r["target"] and r["p95_ms"] >= TARGET_MS]
    one, five, fifteen = os.getloadavg()
    print(f"\nload average while measuring: {one:.1f} {five:.1f} {fifteen:.1f}"
          " (cpu p95: the handler alone, unaffected by other work on the machine)")
    write_json(args.json, {"requests": meta["requests"], "days": days, "repeat": repeat,
                           "results": rows, "page_weight": weight, "target_ms": TARGET_MS,
                           "missed": len(missed), "quick": args.quick,
                           "load_average": os.getloadavg()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
