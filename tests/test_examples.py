"""Every example in ``examples/`` runs on its own, answers, and records what it served.

Servers run as subprocesses with ``PORT=0`` and announce the port they got; the
test reads it from their output, sends real requests, stops them with SIGINT
(what Ctrl-C sends) and reads the SQLite file the kit wrote at exit. gunicorn
runs ``examples/gunicorn.conf.py`` with only ``--bind`` overridden, on an
inherited socket bound to port 0.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from instrument._envdoc import render_env
from instrument.alerting.config import ALERT_VARIABLES
from instrument.config import VARIABLES
from tests.servers import HOST, listening_socket, query, wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
URL = re.compile(r"http://127\.0\.0\.1:([1-9]\d*)")


def example_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment without any INSTRUMENT_* setting, plus a store under tmp_path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("INSTRUMENT_") and k not in ("METRICS_DB_PATH", "ALERTS_DB_PATH")}
    env |= {"INSTRUMENT_METRICS_DB": str(tmp_path / "metrics.db"), "PYTHONUNBUFFERED": "1"}
    return env | extra


class Output:
    """Collects a subprocess's merged output on a thread, so its pipe never fills."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line)

    def close(self, proc: subprocess.Popen[str]) -> None:
        """After the process ended: collect the rest and close the pipe."""
        self._thread.join(10.0)
        if proc.stdout is not None:
            proc.stdout.close()

    def text(self) -> str:
        return "".join(self.lines)

    def url(self) -> str | None:
        match = URL.search(self.text())
        return f"http://{HOST}:{match.group(1)}" if match else None


@contextmanager
def example_server(script: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run ``python examples/<script>`` with PORT=0; yields its URL once it listens."""
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / script)], cwd=tmp_path,
                            env=example_env(tmp_path, PORT="0"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = Output(proc)
    try:
        url = wait_until(lambda: out.url() or (proc.poll() is not None and "exited"),
                         timeout=30.0, what=f"{script} to listen")
        assert url != "exited", out.text()
        yield url, proc
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30.0) == 0, out.text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10.0)
        out.close(proc)


def stored(tmp_path: Path, db: str = "metrics.db") -> list[tuple[str, str, int]]:
    return [tuple(r) for r in query(tmp_path / db, "SELECT endpoint, method, status_code"
                                    " FROM api_metrics ORDER BY id")]  # type: ignore[misc]


def test_flask_example_serves_and_records_route_templates(tmp_path: Path) -> None:
    """The Flask example answers on the port it announces and stores each request by rule."""
    with example_server("flask_app.py", tmp_path) as (url, _proc), requests.Session() as s:
        assert s.get(url + "/items/7", timeout=10).json()["name"] == "item-7"
        assert s.get(url + "/items/700", timeout=10).status_code == 404
        created = s.post(url + "/items", json={"name": "x"}, timeout=10)
        assert created.status_code == 201 and "X-Request-ID" in created.headers
        # One connection is served by one thread, so this answer means the POST's response
        # was closed (and recorded) already; the sentinel itself may race the Ctrl-C.
        assert s.get(url + "/", timeout=10).status_code == 200
    assert stored(tmp_path)[:3] == [("/items/<int:item_id>", "GET", 200),
                                    ("/items/<int:item_id>", "GET", 404), ("/items", "POST", 201)]


def test_fastapi_example_serves_and_records_route_templates(tmp_path: Path) -> None:
    """The FastAPI example answers under uvicorn and stores routes with the router prefix."""
    with example_server("fastapi_app.py", tmp_path) as (url, _proc):
        assert requests.get(url + "/api/users/7", timeout=10).json() == {"id": 7,
                                                                         "name": "user-7"}
        assert requests.get(url + "/api/report", timeout=10).text.count("line") == 10
        assert requests.get(url + "/api/fail", timeout=10).status_code == 500
    assert stored(tmp_path) == [("/api/users/{user_id}", "GET", 200), ("/api/report", "GET", 200),
                                ("/api/fail", "GET", 500)]


def test_litestar_example_serves_and_records_route_templates(tmp_path: Path) -> None:
    """The Litestar example answers under uvicorn and stores each request by its template."""
    with example_server("litestar_app.py", tmp_path) as (url, _proc):
        assert requests.get(url + "/books/3", timeout=10).json() == {"id": 3, "title": "book-3"}
        assert requests.get(url + "/books/99", timeout=10).status_code == 404
        assert requests.post(url + "/books", json={"title": "x"}, timeout=10).json() == {
            "received": 1}
        assert requests.get(url + "/report", timeout=10).text.count("line") == 5
        assert requests.get(url + "/fail", timeout=10).status_code == 500
        assert requests.get(url + "/nowhere", timeout=10).status_code == 404
    assert stored(tmp_path) == [("/books/{book_id}", "GET", 200), ("/books/{book_id}", "GET", 404),
                                ("/books", "POST", 201), ("/report", "GET", 200),
                                ("/fail", "GET", 500), ("__unmatched__", "GET", 404)]


def test_falcon_example_serves_and_records_route_templates(tmp_path: Path) -> None:
    """The Falcon example answers under wsgiref and stores each request by uri_template."""
    with example_server("falcon_app.py", tmp_path) as (url, _proc):
        assert requests.get(url + "/notes/4", timeout=10).json() == {"id": 4, "text": "note-4"}
        assert requests.get(url + "/notes/99", timeout=10).status_code == 404
        assert requests.post(url + "/notes", data=b"hello", timeout=10).json() == {
            "received": 5}
        assert requests.get(url + "/fail", timeout=10).status_code == 500
        assert requests.get(url + "/nowhere", timeout=10).status_code == 404
    assert stored(tmp_path) == [("/notes/{note_id:int}", "GET", 200),
                                ("/notes/{note_id:int}", "GET", 404), ("/notes", "POST", 201),
                                ("/fail", "GET", 500), ("__unmatched__", "GET", 404)]


@pytest.mark.parametrize("script", ["wsgi_app.py", "asgi_app.py"])
def test_plain_examples_count_the_body_they_read(script: str, tmp_path: Path) -> None:
    """The framework-free WSGI and ASGI examples answer with the body size and record it."""
    with example_server(script, tmp_path) as (url, _proc):
        assert requests.post(url + "/upload", data=b"x" * 1000, timeout=10).text == "hello 1000\n"
    rows = query(tmp_path / "metrics.db",
                 "SELECT endpoint, method, status_code, request_size_bytes FROM api_metrics")
    assert rows == [("/upload", "POST", 200, 1000)]


def test_gunicorn_config_runs_its_workers_and_they_record(tmp_path: Path) -> None:
    """gunicorn with examples/gunicorn.conf.py (bind overridden) serves from four workers."""
    sock = listening_socket()
    env = example_env(tmp_path)
    del env["INSTRUMENT_METRICS_DB"]  # the config's raw_env names the file
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(EXAMPLES / "gunicorn.conf.py"),
           "--bind", f"fd://{sock.fileno()}", "--pythonpath", str(ROOT),
           "--log-level", "warning", "examples.flask_app:app"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, pass_fds=[sock.fileno()],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = Output(proc)
    url = f"http://{HOST}:{sock.getsockname()[1]}"
    sock.close()
    try:
        import psutil

        wait_until(lambda: len(psutil.Process(proc.pid).children()) >= 4 or proc.poll() is not None,
                   timeout=60.0, what="four gunicorn workers")
        assert proc.poll() is None, out.text()
        workers = {c.pid for c in psutil.Process(proc.pid).children()}
        ids = {requests.get(url + f"/items/{i}", timeout=10).json()["id"] for i in range(1, 41)}
        assert ids == set(range(1, 41))
        proc.send_signal(signal.SIGTERM)  # graceful: each worker flushes at exit
        assert proc.wait(60.0) == 0, out.text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10.0)
        out.close(proc)
    db = tmp_path / "instrument-data" / "metrics.db"  # where the config's raw_env points
    rows = query(db, "SELECT endpoint, status_code, pid FROM api_metrics")
    assert len(rows) == 40 and {r[:2] for r in rows} == {("/items/<int:item_id>", 200)}
    assert {r[2] for r in rows} <= workers  # recorded in the workers, not in the master


def test_batch_jobs_example_times_sync_and_async_jobs(tmp_path: Path) -> None:
    """The batch jobs example reports 18 done and 2 failed, and every call is stored by name."""
    done = subprocess.run([sys.executable, str(EXAMPLES / "batch_jobs.py")], cwd=tmp_path,
                          env=example_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'done': 18, 'failed': 2}"
    rows = query(tmp_path / "metrics.db", "SELECT name, COUNT(*), COUNT(exception) FROM"
                 " call_metrics WHERE kind = 'call' GROUP BY name ORDER BY name")
    assert rows == [("__main__.fetch_prices", 5, 0), ("jobs.report", 1, 0),
                    ("jobs.resize", 20, 2)]


def test_custom_alerts_example_notifies_its_handler(tmp_path: Path) -> None:
    """The custom rule fires at its first evaluation and the custom handler prints it."""
    done = subprocess.run([sys.executable, str(EXAMPLES / "custom_alerts.py")], cwd=tmp_path,
                          env=example_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("Custom notification: high_queue_size -"
                                   " Background queue is backing up")
    with sqlite3.connect(tmp_path / "instrument-data" / "alerts.db") as conn:
        alerts = conn.execute("SELECT name, severity, status FROM alerts").fetchall()
    assert alerts == [("high_queue_size", "medium", "firing")]


def test_env_example_lists_every_variable_with_its_default() -> None:
    """examples/.env.example is what ``python -m instrument._envdoc env`` generates today."""
    text = (EXAMPLES / ".env.example").read_text()
    assert text == render_env(), "run: python -m instrument._envdoc env > examples/.env.example"
    names = re.findall(r"^# ([A-Z_]+)=", text, flags=re.M)
    assert names == [v.name for v in (*VARIABLES, *ALERT_VARIABLES)]
    assert "# INSTRUMENT_FLUSH_INTERVAL=1.0" in text
    assert "# INSTRUMENT_ALERT_DEFAULT_RULES=all" in text
