"""Shared plumbing for the benchmark scripts: arguments, in-process drivers, timing, tables.

Overhead numbers are differences of a few microseconds between runs of a few
microseconds, so every comparison runs in one process, variants alternate round
by round (a CPU frequency change or a noisy neighbour hits all of them alike),
and each variant's figure is the median over rounds.

Rounds are timed with ``time.thread_time()``: the CPU time of the thread serving
the requests. It leaves out time this process spends descheduled on a busy
machine, and the kit's own flusher thread, whose cost is reported separately.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from time import perf_counter, thread_time
from typing import Any

__all__ = [
    "FloorASGI",
    "acall_runner",
    "asgi_runner",
    "asgi_scope",
    "call_runner",
    "environment",
    "floor_acall",
    "floor_asgi",
    "floor_call",
    "floor_wsgi",
    "interleave",
    "parser",
    "print_table",
    "start_response",
    "write_json",
    "wsgi_environ",
    "wsgi_runner",
]


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark script shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="tiny run that only proves the script works (numbers are noise)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    return p


def environment() -> dict[str, Any]:
    """Where the numbers were taken, kept next to them in the JSON."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -- drivers ----------------------------------------------------------------
def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
    return _write


def _write(data: bytes) -> None:
    return None


def wsgi_environ(path: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000", "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def wsgi_runner(app: Any, path: str,
                headers: dict[str, str] | None = None) -> Callable[[int], float]:
    """Calls of ``app`` for ``path``; ``headers`` (``{"traceparent": ...}``) are sent with each."""
    environ = wsgi_environ(path)
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value

    def run(n: int) -> float:
        copy, sr = environ.copy, start_response
        t0 = thread_time()
        for _ in range(n):
            body = app(copy(), sr)
            for _chunk in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return thread_time() - t0
    return run


_REQUEST = {"type": "http.request", "body": b"", "more_body": False}


async def _receive() -> dict[str, Any]:
    return _REQUEST


async def _send(message: Any) -> None:
    return None


def asgi_scope(path: str) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
        "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {},
    }


def asgi_runner(loop: asyncio.AbstractEventLoop, app: Any, path: str,
                headers: dict[str, str] | None = None) -> Callable[[int], float]:
    """Calls of ``app`` for ``path``; ``headers`` (``{"traceparent": ...}``) are sent with each."""
    scope = asgi_scope(path)
    scope["headers"] += [(n.lower().encode(), v.encode()) for n, v in (headers or {}).items()]

    async def many(n: int) -> float:
        copy = scope.copy
        t0 = thread_time()
        for _ in range(n):
            await app(copy(), _receive, _send)
        return thread_time() - t0
    return lambda n: loop.run_until_complete(many(n))


class _MemoryTransport(asyncio.Transport):
    """A connection's far end kept in memory: uvicorn's protocol writes here, no socket."""

    def __init__(self) -> None:
        super().__init__()
        self.head = b""  # the status line of the latest response
        self._closing = False

    def write(self, data: Any) -> None:
        if data[:5] == b"HTTP/":
            self.head = bytes(data[:40])

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000),
                "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0


def server_runner(loop: asyncio.AbstractEventLoop, app: Any, path: str) -> Callable[[int], float]:
    """Drive ``app`` through uvicorn's own HTTP/1.1 protocol, as it runs behind a socket.

    Each request is real request bytes handed to the protocol's ``data_received``;
    uvicorn parses them, builds the scope, runs the app in a task and serialises the
    response into the transport. Only the socket is replaced (by memory). This is the
    context the middleware lives in when deployed: the server's own work runs between
    two requests, so the middleware's code and data are no longer hot in the CPU's
    caches as they are in :func:`asgi_runner`'s tight loop, and every instruction costs
    what it costs on a real server.
    """
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    # keep-alive without limit: a group waits while the others run, its connection stays open
    config = Config(app, lifespan="off", access_log=False, log_level="warning",
                    timeout_keep_alive=10**6)
    config.load()
    state = ServerState()
    protocol = config.http_protocol_class(config, state, {}, _loop=loop)  # type: ignore[call-arg]
    transport = _MemoryTransport()
    protocol.connection_made(transport)
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAccept: */*\r\n"
               "User-Agent: bench\r\n\r\n").encode()
    tasks = state.tasks
    sleep = asyncio.sleep

    async def many(n: int) -> float:
        feed = protocol.data_received
        t0 = thread_time()
        for _ in range(n):
            feed(request)
            while tasks:  # the app's task: one loop turn when nothing in it waits
                await sleep(0)
        return thread_time() - t0

    def run(n: int) -> float:
        elapsed = loop.run_until_complete(many(n))
        if not transport.head.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"{path} answered {transport.head!r}, not 200")
        return elapsed
    return run


def call_runner(func: Callable[[int], int]) -> Callable[[int], float]:
    def run(n: int) -> float:
        t0 = thread_time()
        for i in range(n):
            func(i)
        return thread_time() - t0
    return run


def acall_runner(loop: asyncio.AbstractEventLoop, func: Any) -> Callable[[int], float]:
    async def many(n: int) -> float:
        t0 = thread_time()
        for i in range(n):
            await func(i)
        return thread_time() - t0
    return lambda n: loop.run_until_complete(many(n))


# -- floor: two clock reads and one append, nothing else --------------------
_floor_buf: deque[tuple[float, float]] = deque(maxlen=32768)


def floor_wsgi(app: Any) -> Any:
    append = _floor_buf.append

    def middleware(environ: Any, start_response: Any) -> Any:
        t0 = perf_counter()
        body = app(environ, start_response)
        append((t0, perf_counter()))
        return body
    return middleware


def floor_asgi(app: Any) -> Any:
    append = _floor_buf.append

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        t0 = perf_counter()
        await app(scope, receive, send)
        append((t0, perf_counter()))
    return middleware


class FloorASGI:
    """The floor as an ASGI middleware class, for ``Middleware(FloorASGI)``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.append = _floor_buf.append

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        t0 = perf_counter()
        await self.app(scope, receive, send)
        self.append((t0, perf_counter()))


def floor_call(func: Any) -> Any:
    append = _floor_buf.append

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = perf_counter()
        result = func(*args, **kwargs)
        append((t0, perf_counter()))
        return result
    return wrapper


def floor_acall(func: Any) -> Any:
    append = _floor_buf.append

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = perf_counter()
        result = await func(*args, **kwargs)
        append((t0, perf_counter()))
        return result
    return wrapper


def interleave(variants: Sequence[tuple[str, Callable[[int], float]]], *, rounds: int,
               round_seconds: float, max_number: int = 100_000) -> dict[str, dict[str, float]]:
    """Run each ``runner(number)`` (returns seconds for ``number`` iterations) round by round.

    Each variant gets its own ``number`` so that one of its rounds lasts about
    ``round_seconds`` (a slow peer does not stretch the whole run), capped at
    ``max_number``. The order of the variants rotates every round so that none
    always runs right after the same neighbour. Returns per variant the median,
    minimum and interquartile range of the per-iteration cost in microseconds, and
    its overhead over the first variant (the baseline).
    """
    numbers: dict[str, int] = {}
    for name, run in variants:  # warm-up and calibration in one go
        run(20)
        per_call = max(run(50) / 50, 1e-9)
        numbers[name] = int(min(max_number, max(20, round_seconds / per_call)))
    samples: dict[str, list[float]] = {name: [] for name, _ in variants}
    order = list(variants)
    for r in range(rounds):
        shift = r % len(order)
        for name, run in order[shift:] + order[:shift]:
            n = numbers[name]
            samples[name].append(run(n) / n * 1e6)
    base = samples[variants[0][0]]
    out: dict[str, dict[str, float]] = {}
    for name, values in samples.items():
        # Overhead is the median of per-round differences to the baseline: both ran
        # within milliseconds of each other, so slow drifts of machine speed cancel.
        diffs = [v - b for v, b in zip(values, base, strict=True)]
        ordered = sorted(values)
        q = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
        out[name] = {"median_us": statistics.median(ordered), "min_us": ordered[0],
                     "iqr_us": q[2] - q[0], "overhead_us": statistics.median(diffs),
                     "rounds": len(values), "number": numbers[name]}
    return out


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
                title: str | None = None) -> None:
    """Print rows as a fixed-width text table (numbers right-aligned)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                    for i, (h, w) in enumerate(zip(headers, widths, strict=True))))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    sys.stdout.flush()


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,d}"
    return str(value)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` plus the environment to ``path`` (nothing when path is None)."""
    if not path:
        return
    data = {"environment": environment(), **payload}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
