"""Real servers for the adapter tests, on free loopback ports, plus readers for the SQLite store.

Every server here listens on a socket bound to port 0 before it starts, so no
port is ever guessed and a client can connect as soon as the helper returns.
WSGI servers close the response iterable (and so record the request) just
after the last byte is on the wire, and ASGI middleware records after the app
returns, so tests wait for rows with :func:`settled_count` instead of reading once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil

import instrument

__all__ = [
    "HOST",
    "GunicornProcess",
    "gunicorn_server",
    "listening_socket",
    "query",
    "row_count",
    "settled_count",
    "uvicorn_server",
    "wait_until",
    "werkzeug_server",
]

HOST = "127.0.0.1"
T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01,
               what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def listening_socket() -> socket.socket:
    """A TCP socket on 127.0.0.1 with a kernel-chosen port, already listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(512)
    return sock


# -- SQLite ------------------------------------------------------------------
def query(db: Path | str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` from the metrics file, or [] while the file does not exist yet."""
    path = Path(db)
    if not path.exists():
        return []
    conn = sqlite3.connect(str(path), timeout=5.0)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'api_metrics'").fetchone():
            return []
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def row_count(db: Path | str) -> int:
    """Rows in api_metrics; 0 while the file or the table does not exist."""
    rows = query(db, "SELECT COUNT(*) FROM api_metrics")
    return int(rows[0][0]) if rows else 0


def settled_count(db: Path | str, expected: int, *, flush: bool = True, timeout: float = 15.0,
                  sql: str = "SELECT COUNT(*) FROM api_metrics") -> int:
    """Wait until ``sql`` counts at least ``expected``, then flush once more and count again.

    The second read makes an exact assertion meaningful: a request recorded
    twice would show up as more rows than expected, not be hidden by the wait.
    """

    def count() -> int:
        if flush:
            instrument.flush(5.0)
        rows = query(db, sql)
        return int(rows[0][0]) if rows else 0

    with contextlib.suppress(TimeoutError):
        wait_until(lambda: count() >= expected, timeout=timeout, interval=0.02,
                   what=f"{expected} rows")
    return count()


# -- driving an app from the test ----------------------------------------------
def in_threads(target: Callable[[int], None], threads: int, timeout: float = 60.0,
               explain: Callable[[], str] | None = None) -> None:
    """Run ``target(n)`` for n in range(threads), all at once; fail on any thread's error
    (the first one, or what ``explain`` says, such as a server's output)."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:  # reported by the calling thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout)
    assert not errors, explain() if explain else errors[0]


def asgi_scope(path: str, method: str = "GET") -> dict[str, Any]:
    """A plain HTTP scope, for calling an ASGI app directly without a server."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": b"", "headers": [],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}


# -- werkzeug (threaded) -------------------------------------------------------
@contextlib.contextmanager
def werkzeug_server(app: Any) -> Iterator[str]:
    """Serve a WSGI app with werkzeug's threaded server in a thread; yields the base URL."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    server = make_server(HOST, 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="werkzeug-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)


# -- uvicorn -------------------------------------------------------------------
@contextlib.contextmanager
def uvicorn_server(app: Any, *, lifespan: str = "on") -> Iterator[str]:
    """Serve an ASGI app with ``uvicorn.Server`` in a thread; yields the base URL once started."""
    import uvicorn

    sock = listening_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan=lifespan, log_config=None, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=5,
                            ws="websockets-sansio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="uvicorn-test-server", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        if not server.started:
            raise RuntimeError("uvicorn exited during start-up")
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(10.0)
        sock.close()


# -- gunicorn (subprocess) -----------------------------------------------------
@dataclass
class GunicornProcess:
    """A running gunicorn master: its process, URL and log file."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def worker_pids(self) -> set[int]:
        return {c.pid for c in psutil.Process(self.proc.pid).children()}

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM the master (graceful stop) and wait for it to exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def gunicorn_server(app_dir: Path, target: str, *, workers: int = 2,
                    env: Mapping[str, str] | None = None) -> Iterator[GunicornProcess]:
    """Run ``gunicorn --preload`` with sync workers on an inherited listening socket.

    Yields once every worker has been forked; the listening socket queues
    connections until then, so no readiness request (which would be recorded)
    is needed.
    """
    sock = listening_socket()
    port = sock.getsockname()[1]
    log = app_dir / "gunicorn.log"
    cmd = [sys.executable, "-m", "gunicorn", "--preload", "--worker-class", "sync",
           "--workers", str(workers), "--bind", f"fd://{sock.fileno()}",
           "--chdir", str(app_dir), "--graceful-timeout", "20", "--log-level", "warning",
           target]
    full_env = {**os.environ, **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=full_env, pass_fds=[sock.fileno()], stdout=out,
                                stderr=subprocess.STDOUT)
    sock.close()  # the master holds its own copy
    server = GunicornProcess(proc, f"http://{HOST}:{port}", log)
    try:
        wait_until(lambda: len(server.worker_pids()) >= workers or proc.poll() is not None,
                   timeout=30.0, what="gunicorn workers")
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited early:\n{server.output()}")
        yield server
    finally:
        if proc.poll() is None:
            try:
                server.terminate(10.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10.0)
