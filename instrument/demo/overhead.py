"""The kit's own cost, measured on this machine at the end of the demo run.

An in-process micro-benchmark: the example apps are called directly (a WSGI
call with a prepared environ, an ASGI call with a prepared scope; no sockets),
built twice from the same example file, once bare (the adapter line turned into
a no-op) and once instrumented as deployed (request ids, dashboard mount and
``/metrics`` check included). Rounds alternate between the two so drift hits
both alike; each round is timed with ``time.thread_time()`` (CPU of the calling
thread, so the flusher and other threads do not count), and the overhead is the
median of the per-round differences. The instrumented apps append to a private
buffer of the same kind as the kit's, emptied between rounds, so these calls
are not stored. The flusher's cost is reported separately, from its thread's
CPU time over the whole run.
"""

from __future__ import annotations

import asyncio
import gc
import io
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from time import thread_time
from types import ModuleType
from typing import Any

from instrument.core.buffer import Recorder
from instrument.core.runtime import runtime

__all__ = ["CALLS", "ROUNDS", "Result", "flusher_cpu_seconds", "measure"]

Run = Callable[[int], float]
ROUNDS = 21
CALLS = 150


@dataclass
class Result:
    """Medians in microseconds per request, and the spread of the per-round differences."""

    app: str
    target: str
    bare_us: float
    instrumented_us: float
    overhead_us: float
    q1_us: float
    q3_us: float
    calls: int


def _environ(path: str) -> dict[str, Any]:
    return {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1", "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False}


def _start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
    return lambda data: None


def _wsgi_runner(app: Any, path: str) -> Run:
    environ = _environ(path)

    def run(n: int) -> float:
        t0 = thread_time()
        for _ in range(n):
            body = app(environ.copy(), _start_response)
            for _chunk in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return thread_time() - t0
    return run


def _asgi_runner(loop: asyncio.AbstractEventLoop, app: Any, path: str) -> Run:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": [(b"host", b"127.0.0.1")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: Any) -> None:
        return None

    async def many(n: int) -> float:
        t0 = thread_time()
        for _ in range(n):
            await app(dict(scope), receive, send)
        return thread_time() - t0
    return lambda n: loop.run_until_complete(many(n))


def _passthrough(app: Any, *args: Any, **kwargs: Any) -> Any:
    return app


def _built(module: ModuleType, adapter: str, bare: bool) -> Any:
    """``module.create_app()`` with the adapter named ``adapter`` a no-op when ``bare``."""
    original = getattr(module, adapter)
    if bare:
        setattr(module, adapter, _passthrough)
    try:
        return module.create_app()
    finally:
        setattr(module, adapter, original)


def _privatise(node: Any, private: Recorder) -> int:
    """Kit middlewares in a chain of ``.app`` links (they store into ``private`` meanwhile)."""
    found = 0
    for _ in range(32):
        if node is None:
            break
        if type(node).__name__ == "InstrumentMiddleware" \
                and type(node).__module__.startswith("instrument."):
            found += 1
        node = getattr(node, "app", None)
    return found


@contextmanager
def _private_buffer(private: Recorder) -> Iterator[None]:
    """Point the middlewares' buffer at ``private``: the benchmark's samples are not stored.

    The middlewares store into the recorder their module is bound to (once, for a
    cheaper request path; their compiled exchanges too), so that is what is swapped,
    and put back afterwards.
    """
    from instrument.adapters import asgi, wsgi

    saved = [(m, m.record_into(private)) for m in (wsgi, asgi)]
    try:
        yield
    finally:
        for m, rec in saved:
            m.record_into(rec)


def _compare(app: str, target: str, bare: Run, instrumented: Run, private: Recorder,
             rounds: int, calls: int) -> Result:
    bare(20)
    instrumented(20)
    private.buf.clear()
    gc.collect()
    b: list[float] = []
    i: list[float] = []
    for r in range(rounds):
        order = [(bare, b), (instrumented, i)] if r % 2 == 0 else [(instrumented, i), (bare, b)]
        for run, out in order:
            out.append(run(calls) / calls * 1e6)
            private.buf.clear()
    diffs = sorted(x - y for x, y in zip(i, b, strict=True))
    q = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else [diffs[0]] * 3
    return Result(app, target, statistics.median(b), statistics.median(i),
                  statistics.median(diffs), q[0], q[2], 2 * rounds * calls)


def measure(flask_module: ModuleType, fastapi_module: ModuleType, *, rounds: int = ROUNDS,
            calls: int = CALLS) -> list[Result]:
    """Bare against instrumented for both example apps; about 2 x rounds x calls calls each."""
    private = Recorder(capacity=1 << 20)
    with _private_buffer(private):
        return _measure(flask_module, fastapi_module, private, rounds, calls)


def _measure(flask_module: ModuleType, fastapi_module: ModuleType, private: Recorder,
             rounds: int, calls: int) -> list[Result]:
    results = []
    flask_bare = _built(flask_module, "Instrument", bare=True)
    flask_kit = _built(flask_module, "Instrument", bare=False)
    if not _privatise(flask_kit.wsgi_app, private):
        raise RuntimeError("the Flask example is not instrumented")
    results.append(_compare("Flask", "GET /items/42", _wsgi_runner(flask_bare, "/items/42"),
                            _wsgi_runner(flask_kit, "/items/42"), private, rounds, calls))
    loop = asyncio.new_event_loop()
    try:
        api_bare = _built(fastapi_module, "InstrumentMiddleware", bare=True)
        api_kit = _built(fastapi_module, "InstrumentMiddleware", bare=False)
        for app in (api_bare, api_kit):
            app.middleware_stack = app.build_middleware_stack()
        if not _privatise(api_kit.middleware_stack, private):
            raise RuntimeError("the FastAPI example is not instrumented")
        results.append(_compare("FastAPI", "GET /api/users/7",
                                _asgi_runner(loop, api_bare, "/api/users/7"),
                                _asgi_runner(loop, api_kit, "/api/users/7"), private, rounds,
                                calls))
    finally:
        loop.close()
    return results


def flusher_cpu_seconds() -> float:
    """CPU seconds the kit's flusher thread has used since it started (0 if unknown)."""
    import psutil

    thread = getattr(runtime.flusher, "_thread", None)
    native = getattr(thread, "native_id", None)
    if native is None:
        return 0.0
    for t in psutil.Process().threads():
        if t.id == native:
            return float(t.user_time + t.system_time)
    return 0.0
