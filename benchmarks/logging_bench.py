"""Logging costs: per log call, lines per second into SQLite, search latency, request-id cost.

1. Cost of one ``logger.info(...)`` call inside a request context: the stdlib
   ``Formatter`` against :class:`JsonFormatter`, and the JSON formatter plus the
   :class:`StoreHandler` that ships the record through the ring buffer. The
   stream is a no-op writer, so the figures are formatting and shipping only.
2. Lines per second the SQLite backend stores (``logs`` plus its FTS5 index),
   written in flusher-sized batches through ``SQLiteBackend.write``.
3. Search latency over a store of a million lines (``--quick``: 20,000) for a
   mix of filters, through :func:`instrument.logsearch.search_logs` on the file
   path, as the dashboard calls it. Target: p95 under 50 ms.
4. Added cost per request of the request id (accept or mint, context, response
   header) in the WSGI and ASGI middleware: request_id on against off.

Run: ``python benchmarks/logging_bench.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any

from _common import interleave, parser, print_table, write_json

import instrument
from instrument import asgi, wsgi
from instrument.backends.sqlite import SQLiteBackend
from instrument.core.batch import Batch
from instrument.core.buffer import Recorder
from instrument.core.runtime import runtime
from instrument.logs import JsonFormatter, StoreHandler, request_context
from instrument.logsearch import search_logs
from instrument.testing import MemoryBackend

SEARCH_P95_TARGET_MS = 50.0
LOGGERS = ["app", "app.db", "app.db.pool", "app.http", "app.auth", "app.jobs", "app.cache",
           "payments.client", "payments.webhook", "uvicorn.error", "sqlalchemy.engine",
           "urllib3.connectionpool", "celery.worker", "billing", "search.indexer"]
LEVELS = [(logging.DEBUG, 0.12), (logging.INFO, 0.80), (logging.WARNING, 0.06),
          (logging.ERROR, 0.018), (logging.CRITICAL, 0.002)]
WORDS = ["user", "order", "invoice", "cart", "session", "cache", "query", "payment", "retry",
         "timeout", "upstream", "customer", "account", "token", "refresh", "worker", "queue",
         "batch", "export", "import", "report", "shard", "replica", "index", "vacuum",
         "deadline", "backoff", "circuit", "breaker", "quota", "limit"]
TEMPLATES = ["{w1} {w2} took {n} ms", "processed {n} {w1} records for {w2}",
             "cache miss for {w1}:{n}", "{w1} failed after {n} attempts, giving up on {w2}",
             "GET /api/{w1}/{n} 200", "user {n} updated {w1} settings",
             "starting {w1} job {n}", "finished {w2} export in {n} ms"]


class _NullStream(io.TextIOBase):
    def write(self, s: str) -> int:
        return len(s)


def _logger(name: str, *handlers: logging.Handler) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = list(handlers)
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def bench_log_call(quick: bool) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    plain = logging.StreamHandler(_NullStream())
    plain.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    as_json = logging.StreamHandler(_NullStream())
    as_json.setFormatter(JsonFormatter())
    rec = Recorder(capacity=1 << 20)
    rec.enabled = True
    store = StoreHandler(recorder=rec)
    loggers = {"stdlib": _logger("bench.stdlib", plain),
               "json": _logger("bench.json", as_json),
               "json+store": _logger("bench.store", as_json, store)}

    def runner(log: logging.Logger) -> Callable[[int], float]:
        def run(n: int) -> float:
            info = log.info
            with request_context("bench-1", route="/orders/{id}", method="GET"):
                t0 = perf_counter()
                for i in range(n):
                    info("order %s paid by user %d", "A-1", i)
                elapsed = perf_counter() - t0
            rec.buf.clear()
            return elapsed
        return run

    record = logging.LogRecord("bench", logging.INFO, __file__, 1, "order %s paid by user %d",
                               ("A-1", 7), None)

    def parts(step: Callable[[logging.LogRecord], Any]) -> Callable[[int], float]:
        def run(n: int) -> float:  # one handler step on a ready record, no logging machinery
            with request_context("bench-1", route="/orders/{id}", method="GET"):
                t0 = perf_counter()
                for _ in range(n):
                    step(record)
                elapsed = perf_counter() - t0
            rec.buf.clear()
            return elapsed
        return run

    opts: dict[str, Any] = {"rounds": 5 if quick else 30,
                            "round_seconds": 0.01 if quick else 0.05, "max_number": 20_000}
    out = interleave([(k, runner(v)) for k, v in loggers.items()], **opts)
    steps = interleave([("Formatter.format", parts(plain.formatter.format)),
                        ("JsonFormatter.format", parts(as_json.formatter.format)),
                        ("StoreHandler.emit", parts(store.emit))], **opts)
    return out, steps


def make_samples(n: int, rng: random.Random, start: float, span: float) -> list[tuple[Any, ...]]:
    levels = [lv for lv, _ in LEVELS]
    weights = [w for _, w in LEVELS]
    out = []
    rid = None
    for i in range(n):
        if i % 5 == 0:
            rid = f"{rng.getrandbits(48):012x}-{i:x}" if rng.random() < 0.9 else None
        level = rng.choices(levels, weights)[0]
        msg = rng.choice(TEMPLATES).format(w1=rng.choice(WORDS), w2=rng.choice(WORDS),
                                           n=rng.randrange(10_000))
        exc = ("Traceback (most recent call last):\n  File \"app.py\", line 1\n"
               f"TimeoutError: {rng.choice(WORDS)} timed out") if level >= logging.ERROR else None
        out.append(("log", start + span * i / n, level, logging.getLevelName(level),
                    rng.choice(LOGGERS), msg, exc, None, rid,
                    "/api/{name}/{id}" if rid else None, "GET" if rid else None))
    return out


def bench_store(path: str, total: int, batch: int, rng: random.Random) -> tuple[float, float]:
    """Load ``total`` lines in ``batch``-sized writes; returns (lines/s, start epoch)."""
    backend = SQLiteBackend(path, retention_days=3650)
    start = time.time() - 86400
    written, elapsed = 0, 0.0
    while written < total:
        chunk = make_samples(min(batch, total - written), rng, start + 86400 * written / total,
                             86400 * batch / total)
        t0 = perf_counter()
        backend.write(Batch(other={"log": chunk}))
        elapsed += perf_counter() - t0
        written += len(chunk)
    backend.close()
    return written / elapsed, start


def bench_search(path: str, start: float, rng: random.Random,
                 repeats: int) -> dict[str, dict[str, float]]:
    rows = search_logs(path, limit=200)  # recent request ids to look up
    rids = [r["request_id"] for r in rows if r["request_id"]] or ["none"]
    queries: dict[str, Callable[[], dict[str, Any]]] = {
        "latest": lambda: {},
        "text rare": lambda: {"text": f"{rng.choice(WORDS)} {rng.randrange(10_000)}"},
        "text common": lambda: {"text": rng.choice(WORDS)},
        "text phrase": lambda: {"text": f'"{rng.choice(WORDS)} {rng.choice(WORDS)}"'},
        "text prefix": lambda: {"text": rng.choice(WORDS)[:3] + "*"},
        "level ERROR": lambda: {"level": "ERROR"},
        "level CRITICAL": lambda: {"level": "CRITICAL"},
        "logger absent": lambda: {"logger": "no.such.logger"},
        "level WARNING+logger": lambda: {"level": "WARNING", "logger": rng.choice(LOGGERS)},
        "logger prefix": lambda: {"logger": "app"},
        "request id": lambda: {"request_id": rng.choice(rids)},
        "request id+text": lambda: {"request_id": rng.choice(rids), "text": rng.choice(WORDS)},
        "last hour": lambda: {"since": start + 86400 - 3600},
        "hour window": lambda: {"since": (s := start + rng.random() * 82800), "until": s + 3600},
        "hour+ERROR": lambda: {"since": (s := start + rng.random() * 82800), "until": s + 3600,
                               "level": "ERROR"},
        "text+level": lambda: {"text": rng.choice(WORDS), "level": "ERROR"},
        "text+hour": lambda: {"text": rng.choice(WORDS),
                              "since": (s := start + rng.random() * 82800), "until": s + 3600},
    }
    out: dict[str, dict[str, float]] = {}
    every: list[float] = []
    every_cpu: list[float] = []
    for name, make in queries.items():
        times, cpu = [], []
        for _ in range(repeats):
            kwargs = make()
            t0, c0 = perf_counter(), time.thread_time()
            search_logs(path, limit=100, **kwargs)
            times.append((perf_counter() - t0) * 1000)
            cpu.append((time.thread_time() - c0) * 1000)
        every.extend(times)
        every_cpu.extend(cpu)
        times.sort()
        cpu.sort()
        out[name] = {"p50": statistics.median(times), "p95": _p95(times), "max": times[-1],
                     "cpu_p95": _p95(cpu)}
    every.sort()
    every_cpu.sort()
    out["all"] = {"p50": statistics.median(every), "p95": _p95(every), "max": every[-1],
                  "cpu_p95": _p95(every_cpu)}
    return out


def _p95(sorted_values: list[float]) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(0.95 * (len(sorted_values) - 1)))]


# -- request id cost in the middleware ----------------------------------------------
def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def bench_request_id(quick: bool) -> dict[str, dict[str, float]]:
    instrument.configure(backends=[MemoryBackend()], flush_interval=3600, request_id=False)
    w_off, a_off = wsgi.InstrumentMiddleware(_wsgi_app), asgi.InstrumentMiddleware(_asgi_app)
    instrument.configure(backends=[MemoryBackend()], flush_interval=3600, request_id=True)
    w_on, a_on = wsgi.InstrumentMiddleware(_wsgi_app), asgi.InstrumentMiddleware(_asgi_app)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/orders/1", "SERVER_NAME": "h",
               "SERVER_PORT": "80", "HTTP_HOST": "h", "HTTP_ACCEPT": "*/*",
               "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b"")}
    scope = {"type": "http", "method": "GET", "path": "/orders/1", "root_path": "",
             "headers": [(b"host", b"h"), (b"accept", b"*/*"), (b"user-agent", b"bench")]}
    loop = asyncio.new_event_loop()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    def sr(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    def wsgi_run(app: Any) -> Callable[[int], float]:
        def run(n: int) -> float:
            copy = environ.copy
            t0 = perf_counter()
            for _ in range(n):
                body = app(copy(), sr)
                for _chunk in body:
                    pass
                body.close()
            elapsed = perf_counter() - t0
            runtime.recorder.buf.clear()
            return elapsed
        return run

    def asgi_run(app: Any) -> Callable[[int], float]:
        async def many(n: int) -> float:
            copy = scope.copy
            t0 = perf_counter()
            for _ in range(n):
                await app(copy(), receive, send)
            return perf_counter() - t0

        def run(n: int) -> float:
            elapsed = loop.run_until_complete(many(n))
            runtime.recorder.buf.clear()
            return elapsed
        return run

    # Rounds stay under the buffer's high-water mark (no flusher wake-up), and the
    # buffer is emptied between rounds outside the timed region.
    opts: dict[str, Any] = {"rounds": 5 if quick else 40,
                            "round_seconds": 0.005 if quick else 0.03, "max_number": 8000}
    try:
        out = interleave([("wsgi_off", wsgi_run(w_off)), ("wsgi_on", wsgi_run(w_on))], **opts)
        out.update(interleave([("asgi_off", asgi_run(a_off)), ("asgi_on", asgi_run(a_on))],
                              **opts))
        return out
    finally:
        loop.close()
        instrument.shutdown(5.0)


def main() -> int:
    args = parser(__doc__.splitlines()[0]).parse_args()
    quick = args.quick
    rng = random.Random(42)
    calls, steps = bench_log_call(quick)
    print_table(["formatter", "median µs/call", "min", "iqr", "over stdlib"],
                [[k, v["median_us"], v["min_us"], v["iqr_us"], v["overhead_us"]]
                 for k, v in calls.items()],
                title="Cost per log call (inside a request context)")
    print_table(["step", "median µs/record", "min", "iqr"],
                [[k, v["median_us"], v["min_us"], v["iqr_us"]] for k, v in steps.items()],
                title="Per record, without the logging machinery (record creation, findCaller)")
    rid = bench_request_id(quick)
    print_table(["middleware", "median µs/request", "min", "iqr", "added"],
                [[k, v["median_us"], v["min_us"], v["iqr_us"], v["overhead_us"]]
                 for k, v in rid.items()],
                title="Request id in the middleware (trivial app, in process)")
    added = {k: rid[f"{k}_on"]["overhead_us"] for k in ("wsgi", "asgi")}
    print(f"added by the request id: wsgi {added['wsgi']:.2f} µs, asgi {added['asgi']:.2f} µs")
    total = 20_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "logs.db")
        t0 = perf_counter()
        rate, start = bench_store(path, total, 5000, rng)
        print(f"\nSQLite: stored {total:,} lines at {rate:,.0f} lines/s"
              f" (load {perf_counter() - t0:.1f} s wall, incl. generating the lines);"
              f" file {os.path.getsize(path) / 1e6:.0f} MB")
        search = bench_search(path, start, rng, 5 if quick else 40)
    print_table(["query", "p50 ms", "p95 ms", "max ms", "CPU p95 ms"],
                [[k, v["p50"], v["p95"], v["max"], v["cpu_p95"]] for k, v in search.items()],
                title=f"Search over {total:,} lines (limit 100)")
    ok = search["all"]["p95"] < SEARCH_P95_TARGET_MS
    print(f"search p95 {search['all']['p95']:.1f} ms: "
          f"{'within' if ok else 'OVER'} the {SEARCH_P95_TARGET_MS:.0f} ms target")
    write_json(args.json, {
        "quick": quick, "lines": total,
        "log_call_us": {k: v["median_us"] for k, v in calls.items()},
        "request_id_us": {k: v["median_us"] for k, v in rid.items()},
        "request_id_added_us": added,
        "log_call_over_stdlib_us": {k: v["overhead_us"] for k, v in calls.items()},
        "log_step_us": {k: v["median_us"] for k, v in steps.items()},
        "sqlite_lines_per_s": rate, "search_ms": search["all"], "search_by_query_ms": search,
    })
    return 0 if (quick or ok) else 1


if __name__ == "__main__":
    sys.exit(main())
