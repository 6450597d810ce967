"""The demo's load: a weighted mix of realistic requests at both apps, an incident, jobs.

Client threads pick requests from :data:`MIX` by weight: reads with path
parameters, POST bodies from 16 bytes to 64 KiB, streamed responses, 404s,
a 405 and a 422, a slow endpoint, server errors, handler exceptions, and
``/items/<id>/owner``, which makes the Flask app call the FastAPI app through an
instrumented ``requests`` session. During the incident half of the requests go
to the failing endpoints, which is what pushes the error rate past the demo's
alert rule. Every answered request is counted per app, so the summary can check
the store holds exactly as many.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import requests

__all__ = ["MIX", "Call", "Jobs", "Traffic"]

log = logging.getLogger("demo.jobs")


def _int(lo: int, hi: int) -> Callable[[], str]:
    return lambda: str(random.randint(lo, hi))


@dataclass(frozen=True)
class Call:
    """One kind of request: which app, how often, and what it does."""

    app: str
    weight: int
    method: str
    path: str  # "{n}" is replaced by ``arg()``
    arg: Callable[[], str] | None = None
    body: bool = False
    failing: bool = False  # a server error on purpose: the incident sends more of these
    upstream: bool = False  # the Flask handler calls the FastAPI app once


MIX: tuple[Call, ...] = (
    Call("flask", 24, "GET", "/items/{n}", _int(1, 100)),
    Call("flask", 4, "GET", "/items/{n}", _int(101, 999)),  # 404 from the handler
    Call("flask", 8, "POST", "/items", body=True),
    Call("flask", 6, "GET", "/search?q={n}", _int(1, 9)),
    Call("flask", 5, "GET", "/items/{n}/owner", _int(1, 100), upstream=True),
    Call("flask", 2, "GET", "/slow"),
    Call("flask", 4, "GET", "/stream"),
    Call("flask", 3, "GET", "/"),
    Call("flask", 2, "GET", "/no-such-page/{n}", _int(1, 10**6)),  # 404, unmatched route
    Call("flask", 1, "DELETE", "/items/{n}", _int(1, 100)),  # 405
    Call("flask", 2, "GET", "/error", failing=True),  # 503
    Call("flask", 1, "GET", "/boom", failing=True),  # an exception: 500
    Call("fastapi", 16, "GET", "/api/users/{n}", _int(1, 50)),
    Call("fastapi", 3, "GET", "/api/users/{n}", _int(51, 500)),  # 404 (HTTPException)
    Call("fastapi", 1, "GET", "/api/users/not-a-number"),  # 422 from validation
    Call("fastapi", 6, "POST", "/api/users", body=True),
    Call("fastapi", 3, "GET", "/api/report"),  # streamed
    Call("fastapi", 2, "GET", "/api/slow"),
    Call("fastapi", 3, "GET", "/health"),
    Call("fastapi", 1, "GET", "/api/fail", failing=True),  # an exception: 500
)


_CLOSE = {"Connection": "close"}


def _body() -> bytes:
    size = int(2 ** random.uniform(4, 16))  # 16 B .. 64 KiB, log-uniform
    return b'{"name": "' + b"x" * size + b'"}'


class Traffic:
    """Client threads sending :data:`MIX` until the deadline, the cap or :meth:`stop`."""

    def __init__(self, urls: dict[str, str], *, concurrency: int, deadline: float,
                 total: int | None = None, incident: tuple[float, float] | None = None,
                 timeout: float = 15.0) -> None:
        self.urls = urls
        self.concurrency = concurrency
        self.deadline = deadline
        self.total = total
        self.incident = incident  # (start, end) in time.monotonic()
        self.timeout = timeout
        self.answered: Counter[str] = Counter()  # per app
        self.upstream_calls = 0  # answered requests whose handler called the other app
        self.server_errors = 0
        self.failed = 0  # no answer at all (connection refused, timeout)
        self.failures: Counter[str] = Counter()  # what those were
        self.halted = threading.Event()
        self._slots = itertools.count()
        self._lock = threading.Lock()
        self._normal = [c for c in MIX for _ in range(c.weight)]
        self._failing = [c for c in MIX if c.failing]
        self._threads: list[threading.Thread] = []

    @property
    def sent(self) -> int:
        return sum(self.answered.values())

    def in_incident(self, now: float | None = None) -> bool:
        if self.incident is None:
            return False
        now = time.monotonic() if now is None else now
        return self.incident[0] <= now < self.incident[1]

    def start(self) -> None:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._worker, name=f"demo-client-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self.halted.set()

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _next(self) -> Call | None:
        if self.halted.is_set() or time.monotonic() >= self.deadline:
            return None
        if self.total is not None and next(self._slots) >= self.total:
            return None
        if self.in_incident() and random.random() < 0.5:
            return random.choice(self._failing)
        return random.choice(self._normal)

    def _worker(self) -> None:
        with requests.Session() as session:
            while (call := self._next()) is not None:
                path = call.path.replace("{n}", call.arg()) if call.arg else call.path
                # uvicorn drops a connection after an unhandled exception, so a request
                # that is meant to fail there asks for a fresh one instead of a reused one.
                headers = _CLOSE if call.failing and call.app == "fastapi" else None
                try:
                    response = session.request(call.method, self.urls[call.app] + path,
                                               data=_body() if call.body else None,
                                               headers=headers, timeout=self.timeout)
                    response.close()
                except requests.RequestException as exc:
                    with self._lock:
                        self.failed += 1
                        self.failures[f"{call.method} {call.path} {type(exc).__name__}"] += 1
                    continue
                with self._lock:
                    self.answered[call.app] += 1
                    if call.upstream:
                        self.upstream_calls += 1
                    if response.status_code >= 500:
                        self.server_errors += 1


class Jobs:
    """Runs the decorated jobs of ``examples/batch_jobs.py`` in a thread, as a scheduler would.

    Each run gets a request id of its own (``instrument.logs.request_context``) so
    its log lines can be found like a request's.
    """

    def __init__(self, module: ModuleType, every: float = 0.25) -> None:
        self.module = module
        self.every = every
        self.calls = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-jobs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        from instrument.logs import request_context

        jobs: Any = self.module
        n = 0
        while not self._stop.wait(self.every):
            n += 1
            size = random.randint(1, 40) * 10
            with request_context(route="job:resize"):
                self.calls += 1
                try:
                    jobs.resize(size)
                except ValueError:
                    self.failures += 1
                    log.warning("resize job failed", exc_info=True, extra={"size": size})
            if n % 4 == 0:
                with request_context(route="job:fetch_prices"):
                    self.calls += 1
                    prices = asyncio.run(jobs.fetch_prices(3))
                    log.info("prices fetched", extra={"count": len(prices)})
