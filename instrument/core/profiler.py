"""A route-aware sampling profiler: where each route's time goes, at a fixed small cost.

Off by default (``INSTRUMENT_PROFILER=true`` turns it on, ``INSTRUMENT_PROFILER_HZ``
sets the rate, 50 by default). A daemon thread reads ``sys._current_frames()`` that
many times a second and, for every other thread, walks its stack from the innermost
frame outwards until it meets a frame of the kit's own middleware: the adapters
register their entry points' code objects with a reader (:func:`register`) that
takes the route and method from that frame's request. The frames inside it are the
sample's stack, the route's own work; a thread with no such frame (a server thread
between requests, an event loop waiting in ``select``) is not in a request, and its
sample is dropped and counted (``unattributed``). The request path pays nothing
with the profiler off (no thread); on, each request is made current in its context, as
for log lines, so worker threads can be attributed.

What it sees: a threaded WSGI server's request threads by wall clock (a view waiting
on a socket or ``time.sleep`` is sampled waiting, as it should be); on an ASGI event
loop, a coroutine only while it runs (an ``await`` hands the loop back, and the loop
idle is unattributed), so an async route shows its CPU, not its waits. FastAPI's
plain ``def`` endpoints (and Django's sync views under ASGI) run in a worker thread
with no middleware frame on its stack: :func:`register_worker` attributes those
through the request's context, which the worker runs in.
Registered: the WSGI middleware's call and its streamed-body generator, the ASGI
middleware's coroutine, Django's middleware (sync and async) and its body counters.

Samples are added up in memory per (minute, route, method, stack) and handed to the
buffer about once a second as ``("profile", minute, route, method, stack, count)``
samples (stack in the collapsed ``module:function;module:function`` form
flamegraph.pl and speedscope read, outermost first), which the flusher stores like
any sample, in ``profile_stacks``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from contextvars import Context
from typing import Any

from instrument.core.buffer import KIND_PROFILE
from instrument.core.context import current

__all__ = ["KIND_PROFILE", "Profiler", "register", "register_worker"]

_MAX_DEPTH = 128  # frames kept below the middleware (the innermost, where time is spent)
_MAX_KEYS = 20_000  # (minute, route, method, stack) entries held between hand-overs

#: code object of an adapter's entry point -> reads (route, method) from its frame
READERS: dict[Any, Callable[[Any], tuple[str, str] | None]] = {}


def register(code: Any, reader: Callable[[Any], tuple[str, str] | None]) -> None:
    """Make frames running ``code`` mark a request; ``reader(frame)`` names its route."""
    READERS[code] = reader


def register_worker(code: Any, local: str = "context",
                    lines: frozenset[int] | None = None) -> None:
    """Make a worker thread's frame running ``code`` mark the request it runs code for.

    anyio's worker threads (FastAPI's and Starlette's plain ``def`` endpoints) and
    asgiref's (Django's sync views under ASGI) run a request's code inside a copy of the
    request's ``contextvars.Context``, held in a local of that frame (``local``); the
    adapters made the request current in it (the profiler turns that on), so the copy
    names it. ``lines``: the lines of ``code`` that run the request (outside them the
    local still holds the previous job's context, and the thread is idle).
    """
    def reader(frame: Any) -> tuple[str, str] | None:
        if lines is not None and frame.f_lineno not in lines:
            return None
        context = frame.f_locals.get(local)
        request = context.get(current) if isinstance(context, Context) else None
        if request is None:
            return None
        _rid, method, route = request.describe()
        return str(route), str(method)
    register(code, reader)


def _label(code: Any, module: Any) -> str:
    name = getattr(code, "co_qualname", code.co_name)
    return f"{module}:{name}"


class Profiler:
    """The sampling thread and its counts, handed to ``add`` (the recorder's) each second."""

    def __init__(self, add: Callable[[tuple[Any, ...]], Any], hz: int = 50) -> None:
        self.add = add
        self.hz = hz
        self.samples = 0  # attributed to a request
        self.unattributed = 0  # a thread not in a request: dropped
        self.lost = 0  # distinct stacks beyond _MAX_KEYS between hand-overs
        self.errors = 0  # looks that failed (a reader raised): skipped
        self._counts: dict[tuple[Any, ...], int] = {}
        self._labels: dict[Any, str] = {}
        self._lock = threading.Lock()  # a flush hands over from another thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name="instrument-profiler", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # interpreter shutting down
            return
        self._thread = thread

    def stop(self, timeout: float = 2.0) -> None:
        """Stop sampling and hand over what was counted."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.hand_over()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        period = 1.0 / self.hz
        me = threading.get_ident()
        next_at = time.monotonic()
        handed = next_at
        while not self._stop.is_set():
            next_at += period
            try:
                with self._lock:
                    self.sample(me)
            except Exception:  # a reader surprised by a frame: skip this look, keep sampling
                self.errors += 1
            now = time.monotonic()
            if now - handed >= 1.0:
                self.hand_over()
                handed = now
            if next_at < now:  # fell behind (a long GIL hold): skip, do not burst
                next_at = now
            self._stop.wait(next_at - now)

    def sample(self, me: int | None = None) -> None:
        """One look at every thread's stack (but ``me``)."""
        readers = READERS
        counts = self._counts
        minute = int(time.time()) // 60 * 60
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            codes = []
            f: Any = frame
            found = None
            while f is not None:
                code = f.f_code
                reader = readers.get(code)
                if reader is not None:
                    found = reader(f)
                    break
                codes.append(f)
                f = f.f_back
            if found is None:
                self.unattributed += 1
                continue
            self.samples += 1
            stack = tuple(x.f_code for x in codes[:_MAX_DEPTH])
            key = (minute, found[0], found[1], stack)
            n = counts.get(key)
            if n is not None:
                counts[key] = n + 1
            elif len(counts) < _MAX_KEYS:
                counts[key] = 1
                labels = self._labels
                for x in codes[:_MAX_DEPTH]:
                    if x.f_code not in labels:
                        labels[x.f_code] = _label(x.f_code, x.f_globals.get("__name__", "?"))
            else:
                self.lost += 1

    def hand_over(self) -> None:
        """The counts so far, as samples for the flusher; then start counting afresh."""
        with self._lock:
            counts, self._counts = self._counts, {}
            labels = self._labels
            if len(labels) > 50_000:  # code objects of reloaded modules: start the cache over
                self._labels = {}
        for (minute, route, method, stack), n in counts.items():
            text = ";".join(labels.get(c, "?") for c in reversed(stack))
            self.add((KIND_PROFILE, minute, route, method, text, n))

    def stats(self) -> dict[str, Any]:
        return {"on": self.alive, "hz": self.hz, "samples": self.samples,
                "unattributed": self.unattributed, "lost": self.lost, "errors": self.errors}
