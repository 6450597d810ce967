"""Scrape time under gunicorn with 4 workers after N worker restarts' worth of history.

Two ways to be right across gunicorn workers are compared, each served by a
real gunicorn with 4 sync workers and scraped over HTTP:

- **instrument**: every worker's flusher adds its deltas to cumulative totals in
  the shared SQLite file; any worker answers ``/metrics`` from those rows. The
  history of N restarts is written as N short-lived writers (fresh backend,
  fresh pid) adding one batch each, exactly what recycled workers leave behind.
- **prometheus_client multiprocess mode** (when installed): each worker keeps
  ``counter_<pid>.db`` and ``histogram_<pid>.db`` in ``PROMETHEUS_MULTIPROC_DIR``,
  which stay after the worker dies (``mark_process_dead`` removes only live
  gauges); a scrape reads and merges every file. The history is N workers'
  files with the same series.

Each worker's history covers ``--routes`` routes x 2 status codes with a
latency histogram. Reported: median / p95 scrape time, response size and, for
the multiprocess mode, the number of files a scrape reads. ``--quick`` uses 50
restarts and a few scrapes: it only proves the script works.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from _common import parser, print_table, write_json

OURS_APP = textwrap.dedent('''
    from instrument.wsgi import InstrumentMiddleware

    def _app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    app = InstrumentMiddleware(_app)
''')
MULTIPROC_APP = textwrap.dedent('''
    from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess

    def app(environ, start_response):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return make_wsgi_app(registry)(environ, start_response)
''')


def _samples(routes: int) -> list[tuple[Any, ...]]:
    t0 = time.perf_counter()
    out = []
    for r in range(routes):
        for i, status in enumerate((200, 500)):
            ms = 1.0 + 7.0 * r + i
            out.append(("http", t0, t0 + ms / 1000, 0.0, f"/route/{r}/{{id}}", "GET", status,
                        0, 512, None, False))
    return out


def populate_instrument(db: Path, restarts: int, routes: int) -> float:
    """N writers, each a fresh backend with its own pid, add one batch: returns seconds."""
    from instrument.backends.sqlite import SQLiteBackend
    from instrument.core.aggregate import Aggregator

    samples = _samples(routes)
    t0 = time.perf_counter()
    for r in range(restarts):
        backend = SQLiteBackend(str(db))
        agg = Aggregator()
        agg.pid = 100_000 + r
        backend.write(agg.aggregate(samples))
        backend.close()
    return time.perf_counter() - t0


def populate_multiproc(directory: Path, restarts: int, routes: int) -> None:
    """N workers' files, written through prometheus_client's own multiprocess values."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from prometheus_client import CollectorRegistry, Counter, Histogram, values

    pid = [0]
    values.ValueClass = values.MultiProcessValue(lambda: pid[0])
    registry = CollectorRegistry()
    requests_total = Counter("http_requests_total", "Requests.", ["method", "route", "status"],
                             registry=registry)
    duration = Histogram("http_request_duration_seconds", "Duration.", ["method", "route"],
                         registry=registry)
    for r in range(restarts):
        pid[0] = 100_000 + r  # the next worker: new files, as after a restart
        for route in range(routes):
            for status in ("200", "500"):
                requests_total.labels("GET", f"/route/{route}/{{id}}", status).inc()
                duration.labels("GET", f"/route/{route}/{{id}}").observe(0.001 * (1 + route))


@contextlib.contextmanager
def gunicorn(app_dir: Path, env: dict[str, str], workers: int = 4) -> Iterator[str]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--worker-class", "sync",
           "--bind", f"fd://{sock.fileno()}", "--chdir", str(app_dir), "--log-level", "warning",
           "--timeout", "120", "app:app"]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, pass_fds=[sock.fileno()])
    sock.close()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/ready", timeout=60)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("gunicorn did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def time_scrapes(url: str, n: int, warmup: int) -> dict[str, Any]:
    times = []
    size = 0
    with requests.Session() as s:
        for _ in range(warmup):  # each worker imports and builds its registry on first scrape
            s.get(f"{url}/metrics", timeout=600).raise_for_status()
        for _ in range(n):
            t0 = time.perf_counter()
            r = s.get(f"{url}/metrics", timeout=600)
            times.append((time.perf_counter() - t0) * 1000.0)
            r.raise_for_status()
            size = len(r.content)
    times.sort()
    return {"median_ms": statistics.median(times),
            "p95_ms": times[max(0, math.ceil(len(times) * 0.95) - 1)],
            "scrapes": n, "bytes": size}


def serve_and_scrape(source: str, app_text: str, env: dict[str, str], n: int,
                     warmup: int = 8) -> dict[str, Any]:
    app_dir = Path(tempfile.mkdtemp(prefix=f"scrape-{source}-"))
    try:
        (app_dir / "app.py").write_text(app_text)
        with gunicorn(app_dir, env) as url:
            return time_scrapes(url, n, warmup)
    finally:
        shutil.rmtree(app_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--restarts", type=int, default=None, help="worker restarts of history")
    p.add_argument("--routes", type=int, default=10, help="routes per worker (x2 statuses)")
    p.add_argument("--populate-multiproc", metavar="DIR", help=argparse_hidden())
    args = p.parse_args(argv)
    restarts = args.restarts or (50 if args.quick else 10_000)
    if args.populate_multiproc:  # child process: keeps prometheus_client's globals out of ours
        populate_multiproc(Path(args.populate_multiproc), restarts, args.routes)
        return {}
    scrapes = 5 if args.quick else 30
    work = Path(tempfile.mkdtemp(prefix="scrape-bench-"))
    rows: list[list[Any]] = []
    results: dict[str, Any] = {"restarts": restarts, "routes": args.routes, "workers": 4}
    try:
        db = work / "metrics.db"
        env = {"INSTRUMENT_PROMETHEUS": "true", "INSTRUMENT_METRICS_DB": str(db),
               "INSTRUMENT_EXCLUDE_PATHS": "/ready"}
        populate_instrument(db, 1, args.routes)
        fresh = serve_and_scrape("fresh", OURS_APP, env, scrapes)
        seconds = populate_instrument(db, restarts - 1, args.routes)
        ours = serve_and_scrape("ours", OURS_APP, env, scrapes)
        ours["populate_s"] = seconds
        ours["db_mb"] = db.stat().st_size / 2**20
        results["instrument_after_1_restart"] = fresh
        results["instrument"] = ours
        rows.append(["instrument, 1 restart", fresh["median_ms"], fresh["p95_ms"],
                     fresh["bytes"], "1 file"])
        rows.append([f"instrument, {restarts} restarts", ours["median_ms"], ours["p95_ms"],
                     ours["bytes"], f"1 file, {ours['db_mb']:.1f} MB"])
        try:
            import prometheus_client.multiprocess  # noqa: F401
        except ImportError:
            results["prometheus_client_multiprocess"] = None
        else:
            mp_dir = work / "multiproc"
            mp_dir.mkdir()
            subprocess.run([sys.executable, __file__, "--populate-multiproc", str(mp_dir),
                            "--restarts", str(restarts), "--routes", str(args.routes)],
                           check=True)
            files = len(list(mp_dir.iterdir()))
            mp = serve_and_scrape("multiproc", MULTIPROC_APP,
                                  {"PROMETHEUS_MULTIPROC_DIR": str(mp_dir)},
                                  max(2, scrapes // 10), warmup=1)
            mp["files"] = files
            results["prometheus_client_multiprocess"] = mp
            rows.append([f"prometheus_client multiprocess, {restarts} restarts",
                         mp["median_ms"], mp["p95_ms"], mp["bytes"], f"{files} files"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(["exposition", "median ms", "p95 ms", "bytes", "store"], rows,
                title=f"Scrape over HTTP, gunicorn 4 sync workers, {args.routes} routes x 2"
                      " statuses")
    write_json(args.json, {"benchmark": "scrape", "quick": args.quick, **results})
    return results


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
