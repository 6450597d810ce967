"""Resident memory the kit adds to a WSGI process at steady load, with the default buffer.

Two child processes run the same WSGI app under the same load for several
seconds: one bare (``instrument`` is never imported), one wrapped in
``instrument.wsgi.InstrumentMiddleware`` with the default settings (SQLite
backend into a temp file, flusher thread, 32,768-sample buffer). Each samples
its own RSS from ``/proc/self/statm`` four times a second; the steady-state
figure is the median of the second half of the run, the peak the maximum.
The kit's cost is the instrumented child's figure minus the bare child's, so
it includes everything the kit brings: its modules, sqlite3, the flusher
thread, the buffer, batches in flight and SQLite's page cache.

Two loads: ``paced``, a steady 5,000 requests per second (``--rate``), which
the flusher keeps up with: the target, < 10 MB, applies to it; and ``max``,
one thread issuing requests as fast as it can, an overload (far more requests
than one process serves, most of them dropped) that shows the worst case: a
full buffer plus the largest batch the flusher drains at once.

Run: ``python benchmarks/memory.py [--quick] [--seconds S] [--rate N] [--json PATH]``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import parser, print_table, start_response, write_json, wsgi_environ

TARGET_MB = 10.0
PACED_RATE = 5_000.0
PATHS = [f"/api/v1/items/{i}" for i in range(40)] + ["/", "/health", "/login", "/search"]
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """This process's resident set size, from /proc (psutil where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


def _app(environ: Any, start: Any) -> list[bytes]:
    body = b'{"ok": true, "items": [1, 2, 3]}'
    start("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def child(variant: str, load: str, seconds: float, rate: float = PACED_RATE) -> dict[str, Any]:
    """Run the load in this process and return RSS samples (called with --child)."""
    app: Any = _app
    stats: dict[str, Any] = {}
    if variant == "kit":
        import instrument
        from instrument.wsgi import InstrumentMiddleware

        tmp = tempfile.mkdtemp(prefix="instrument-memory-")
        atexit.register(shutil.rmtree, tmp, True)  # runs after the kit's own exit hook
        instrument.configure(metrics_db=os.path.join(tmp, "metrics.db"))
        app = InstrumentMiddleware(_app)
    environs = [wsgi_environ(p) for p in PATHS]
    for e in environs:
        e.pop("wsgi.input")  # a GET: the app never reads it, and copies stay small
    rate = rate if load == "paced" else 0.0
    samples: list[tuple[float, int]] = []
    start = time.perf_counter()
    next_sample = start
    requests = 0
    deadline = start + seconds
    while True:
        now = time.perf_counter()
        if now >= next_sample:
            samples.append((now - start, rss_bytes()))
            next_sample += 0.25
            if now >= deadline:
                break
        if rate:
            due = int((now - start) * rate) - requests
            if due <= 0:
                time.sleep(0.0005)
                continue
        else:
            due = 200
        for _ in range(due):
            body = app(environs[requests % len(environs)].copy(), start_response)
            for _chunk in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
            requests += 1
    if variant == "kit":
        import instrument

        instrument.flush(10.0)  # after the last RSS reading: what was buffered is counted
        stats = instrument.stats()
        stats = {"dropped": stats["dropped"], "samples_flushed": stats["samples_flushed"],
                 "flushes": stats["flushes"]}
        instrument.shutdown()
    return {"variant": variant, "load": load, "requests": requests,
            "seconds": time.perf_counter() - start, "rss": samples, "kit": stats}


def run_child(variant: str, load: str, seconds: float, rate: float) -> dict[str, Any]:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", variant,
                          "--load", load, "--seconds", str(seconds), "--rate", str(rate)],
                         capture_output=True, text=True, check=True, timeout=seconds + 120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(result: dict[str, Any]) -> dict[str, float]:
    rss = [r for _, r in result["rss"]]
    tail = rss[len(rss) // 2:] or rss
    return {"start_mb": rss[0] / 2**20, "steady_mb": statistics.median(tail) / 2**20,
            "peak_mb": max(rss) / 2**20,
            "requests_per_s": result["requests"] / result["seconds"]}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=None, help="load duration per child (8)")
    p.add_argument("--rate", type=float, default=PACED_RATE,
                   help=f"requests per second of the paced load ({PACED_RATE:,.0f})")
    p.add_argument("--child", choices=["bare", "kit"], help=argparse_hidden())
    p.add_argument("--load", choices=["max", "paced"], default="max", help=argparse_hidden())
    args = p.parse_args(argv)
    seconds = args.seconds or (1.0 if args.quick else 8.0)
    if args.child:
        print(json.dumps(child(args.child, args.load, seconds, args.rate)))
        return 0
    results: dict[str, Any] = {}
    rows: list[list[Any]] = []
    for load in ("paced", "max"):
        bare = run_child("bare", load, seconds, args.rate)
        kit = run_child("kit", load, seconds, args.rate)
        b, k = summarize(bare), summarize(kit)
        delta, peak = k["steady_mb"] - b["steady_mb"], k["peak_mb"] - b["peak_mb"]
        entry: dict[str, Any] = {"bare": b, "kit": k, "delta_steady_mb": delta,
                                 "delta_peak_mb": peak, "kit_stats": kit["kit"]}
        verdict = "overload: reference only"
        if load == "paced":
            entry.update(target_mb=TARGET_MB, met=delta < TARGET_MB)
            verdict = f"< {TARGET_MB:g} " + ("ok" if delta < TARGET_MB else "MISSED")
        results[load] = entry
        label = f"steady {args.rate:,.0f}/s" if load == "paced" else "max rate"
        rows.append([label, b["requests_per_s"], k["requests_per_s"], b["steady_mb"],
                     k["steady_mb"], delta, peak, kit["kit"].get("dropped"), verdict])
    print_table(["load", "bare req/s", "kit req/s", "bare MB", "kit MB", "added MB",
                 "added peak MB", "dropped", "target"], rows,
                title=f"Resident memory at steady load ({seconds:g} s per child, default buffer)")
    write_json(args.json, {"benchmark": "memory", "quick": args.quick, "seconds": seconds,
                           "target_mb": TARGET_MB, "loads": results})
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
