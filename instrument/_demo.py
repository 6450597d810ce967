"""``instrument demo``: the example Flask app under mixed traffic, then what the kit recorded."""

from __future__ import annotations

import importlib.util
import itertools
import os
import random
import sqlite3
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import requests

from ._aggregate import iso_utc
from ._runtime import runtime

__all__ = ["find_example", "run_demo"]

# (weight, method, path or callable, body size)
_TRAFFIC: list[tuple[int, str, Any, int]] = [
    (30, "GET", lambda: f"/items/{random.randint(1, 100)}", 0),
    (6, "GET", lambda: f"/items/{random.randint(101, 999)}", 0),  # 404 from the handler
    (12, "POST", "/items", -1),
    (10, "GET", lambda: f"/search?q={random.choice('123456789')}", 0),
    (2, "GET", "/slow", 0),
    (6, "GET", "/stream", 0),
    (3, "GET", "/error", 0),
    (2, "GET", "/boom", 0),
    (4, "GET", lambda: f"/no-such-page/{random.randint(1, 10**6)}", 0),
    (5, "GET", "/", 0),
]


def find_example(name: str) -> Path:
    """The example file, in the installed package or next to the source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_examples" / name, here.parent / "examples" / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"example {name!r} not found (looked in the package and ./examples)")


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"instrument_demo_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Traffic:
    def __init__(self, base: str, total: int | None, deadline: float | None) -> None:
        self.base = base
        self.total = total
        self.deadline = deadline
        self.sent = itertools.count()
        self.answered = 0
        self.failed = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._choices = [t for t in _TRAFFIC for _ in range(t[0])]

    def _next_slot(self) -> bool:
        if self.stop.is_set():
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        n = next(self.sent)
        return self.total is None or n < self.total

    def worker(self) -> None:
        session = requests.Session()
        while self._next_slot():
            _, method, target, size = random.choice(self._choices)
            path = target() if callable(target) else target
            body = None
            if size:
                body = b'{"name": "' + b"x" * random.randint(10, 4000) + b'"}'
            try:
                response = session.request(method, self.base + path, data=body, timeout=10)
                response.close()
                with self._lock:
                    self.answered += 1
            except requests.RequestException:
                with self._lock:
                    self.failed += 1
        session.close()


def _progress(traffic: _Traffic, started: float) -> None:
    width = 30
    while not traffic.stop.wait(0.2):
        done = traffic.answered
        elapsed = time.monotonic() - started
        if traffic.total:
            frac = min(1.0, done / traffic.total)
        elif traffic.deadline:
            frac = min(1.0, elapsed / max(1e-9, traffic.deadline - started))
        else:
            frac = 0.0
        bar = "#" * int(frac * width)
        rate = done / max(elapsed, 1e-9)
        sys.stderr.write(f"\r  [{bar:<{width}}] {done:6d} requests  {rate:7.0f}/s")
        sys.stderr.flush()
    sys.stderr.write("\n")


def route_table(db: str, since_iso: str, pid: int) -> list[dict[str, Any]]:
    """Per-route figures for this run, computed from the raw rows."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT endpoint, method, status_code, response_time_ms, request_size_bytes,"
            " response_size_bytes, error_count FROM api_metrics WHERE timestamp >= ? AND pid = ?",
            (since_iso, pid)).fetchall()
    finally:
        conn.close()
    groups: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for row in rows:
        groups.setdefault((row[0], row[1]), []).append(row)
    table = []
    for (endpoint, method), items in groups.items():
        times = sorted(r[3] for r in items)

        def pct(q: float, times: list[float] = times) -> float:
            return times[min(len(times) - 1, max(0, round(q / 100 * len(times)) - 1))]

        table.append({
            "route": endpoint, "method": method, "count": len(items),
            "error_rate": 100.0 * sum(r[6] for r in items) / len(items),
            "client_errors": sum(1 for r in items if 400 <= r[2] < 500),
            "p50": pct(50), "p95": pct(95), "p99": pct(99),
            "bytes_in": sum(r[4] or 0 for r in items), "bytes_out": sum(r[5] or 0 for r in items),
        })
    table.sort(key=lambda r: -r["count"])
    return table


def _print_table(table: list[dict[str, Any]]) -> None:
    head = (f"{'route':<24} {'method':<6} {'count':>6} {'err%':>6} {'4xx':>5} {'p50 ms':>8} "
            f"{'p95 ms':>8} {'p99 ms':>8} {'bytes in':>10} {'bytes out':>10}")
    print(head)
    print("-" * len(head))
    for r in table:
        print(f"{r['route'][:24]:<24} {r['method']:<6} {r['count']:>6} {r['error_rate']:>6.1f} "
              f"{r['client_errors']:>5} {r['p50']:>8.2f} {r['p95']:>8.2f} {r['p99']:>8.2f} "
              f"{r['bytes_in']:>10} {r['bytes_out']:>10}")


def run_demo(duration: float | None = None, total: int = 3000, concurrency: int = 8,
             db: str | None = None) -> int:
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    options: dict[str, Any] = {"metrics_db": db} if db else {}
    settings = runtime.configure(**options)
    db_path = os.path.abspath(settings.metrics_db)
    started_wall = time.time()
    example = _load(find_example("flask_app.py"))
    app = example.create_app()
    app.logger.disabled = True  # /boom raises on purpose; keep the console for the summary
    server = make_server("127.0.0.1", 0, app, threaded=True)
    server_thread = threading.Thread(target=server.serve_forever, daemon=True)
    server_thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    print(f"instrument demo: example Flask app on {base}")
    print(f"  recording into {db_path}")
    started = time.monotonic()
    traffic = _Traffic(base, None if duration else total,
                       started + duration if duration else None)
    workers = [threading.Thread(target=traffic.worker, daemon=True) for _ in range(concurrency)]
    bar = threading.Thread(target=_progress, args=(traffic, started), daemon=True)
    for t in workers:
        t.start()
    bar.start()
    interrupted = False
    try:
        for t in workers:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        interrupted = True
        traffic.stop.set()
        for t in workers:
            t.join(15)
    traffic.stop.set()
    bar.join(1)
    server.shutdown()
    elapsed = time.monotonic() - started
    flushed = runtime.flush(10.0)
    stats = runtime.stats()
    print()
    if interrupted:
        print("Interrupted: summary of what was recorded so far.")
    print(f"Sent {traffic.answered} requests in {elapsed:.1f}s "
          f"({traffic.answered / max(elapsed, 1e-9):.0f}/s), {traffic.failed} failed to connect.")
    table = route_table(db_path, iso_utc(started_wall - 1), os.getpid())
    _print_table(table)
    recorded = sum(r["count"] for r in table)
    print(f"\nRecorded {recorded} of {traffic.answered} requests; dropped {stats['dropped']}; "
          f"flushed {'fully' if flushed else 'PARTIALLY'}.")
    print(f"Data: {db_path}  (sqlite3 {db_path} 'SELECT * FROM api_metrics LIMIT 5')")
    runtime.shutdown()
    return 0
