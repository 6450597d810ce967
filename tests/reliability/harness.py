"""Shared harness for the reliability suite: an app under load, health probes, fault tools.

``served_app`` runs a small instrumented WSGI app on werkzeug's threaded server
in this process (so ``instrument.stats()`` is the server's own), with the
dashboard mounted behind a token. ``Load`` keeps real HTTP clients hammering it
from threads for as long as a fault lasts and counts every answer, so a test
can compare what the clients got with what the store holds.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from hypothesis import HealthCheck, settings

import instrument
from instrument.wsgi import InstrumentMiddleware
from tests.servers import query, wait_until, werkzeug_server

TOKEN = "reliability-token-5f0c2e9a7b"
HEALTH = "/api/v1/monitoring/health"

#: hypothesis settings of the suite: no time limit per example (the machine may be busy), no
#: example database written into the repository, no health checks on slow generation.
QUIET = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))

#: Figures the suite measured, printed at the end of the run (the README table quotes them).
FIGURES: Counter[str] = Counter()


# -- the app under test ---------------------------------------------------------------
def plain_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A WSGI app that never fails: any error a client sees comes from the kit."""
    body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


class Guard:
    """Outermost WSGI layer: counts exceptions that escaped the kit's middleware."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.escaped: list[BaseException] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        try:
            return self.app(environ, start_response)
        except BaseException as exc:
            self.escaped.append(exc)
            raise


@dataclass
class Served:
    url: str
    db: Path
    guard: Guard

    def health(self) -> dict[str, Any]:
        """The dashboard's health verdict for this process (bearer token)."""
        r = requests.get(self.url + HEALTH, headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=10)
        body: dict[str, Any] = r.json()
        body["http_status"] = r.status_code
        return body

    def rows(self, route: str = "/work") -> int:
        rows = query(self.db, "SELECT COUNT(*) FROM api_metrics WHERE endpoint = ?", route)
        return int(rows[0][0]) if rows else 0


@contextlib.contextmanager
def served_app(db: Path, *, backends: list[Any] | None = None,
               **options: Any) -> Iterator[Served]:
    """Configure the kit (dashboard on, 0.1 s flushes) and serve ``plain_app`` over HTTP."""
    options.setdefault("flush_interval", 0.1)
    instrument.configure(metrics_db=str(db), dashboard_token=TOKEN,
                         **({"backends": backends} if backends is not None else {}), **options)
    guard = Guard(InstrumentMiddleware(plain_app))
    with werkzeug_server(guard) as url:
        yield Served(url, db, guard)


@dataclass
class Load:
    """Client threads sending GET /work to ``url`` until stopped; counts what they got."""

    url: str
    threads: int = 3
    ok: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _client(self) -> None:
        with requests.Session() as s:
            while not self._stop.is_set():
                try:
                    r = s.get(self.url + "/work", timeout=10)
                    outcome = "ok" if r.status_code == 200 and r.content == b"ok" else \
                        f"HTTP {r.status_code}"
                except requests.RequestException as exc:
                    outcome = type(exc).__name__
                with self._lock:
                    if outcome == "ok":
                        self.ok += 1
                    else:
                        self.bad[outcome] += 1

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._client, daemon=True, name=f"load-{i}")
                         for i in range(self.threads)]
        for t in self._workers:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(15)

    def more(self, n: int, timeout: float = 30.0) -> None:
        """Wait until ``n`` more requests were answered (the app keeps serving)."""
        target = self.ok + n
        wait_until(lambda: self.ok >= target, timeout, what=f"{n} more answered requests")


def kit_backend(name: str = "sqlite") -> dict[str, Any]:
    """This process's flusher state for one backend, from ``instrument.stats()``."""
    for backend in instrument.stats()["backends"]:
        if backend["name"] == name:
            return dict(backend)
    raise AssertionError(f"no backend {name!r} in {instrument.stats()}")


def wait_health(served: Served, predicate: Callable[[dict[str, Any]], bool],
                timeout: float = 20.0, what: str = "health") -> dict[str, Any]:
    """Poll the health endpoint until ``predicate(body)``; returns that body."""
    seen: list[dict[str, Any]] = []

    def probe() -> dict[str, Any] | None:
        body = served.health()
        seen[:] = [body]
        return body if predicate(body) else None

    try:
        return wait_until(probe, timeout, interval=0.05, what=what)
    except TimeoutError:
        raise AssertionError(f"{what} never seen; last health: {seen}") from None


def reasons(body: dict[str, Any]) -> str:
    return " | ".join(body.get("reasons") or ())


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted on ``directory`` (we run as root); unmounted after."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                   check=True, capture_output=True)
    try:
        yield directory
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(directory)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)  # a connection still closing
        else:
            subprocess.run(["umount", "-l", str(directory)], check=False)


def chattr(flag: str, *paths: Path) -> None:
    """Set or clear an inode flag (``+i``: immutable, which root cannot write either)."""
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        subprocess.run(["chattr", flag, *existing], check=True, capture_output=True)
