"""Flask and plain WSGI apps under a real gunicorn (2 sync workers, --preload) in a subprocess."""

from __future__ import annotations

import textwrap
import threading
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.servers import GunicornProcess, gunicorn_server, in_threads, query, wait_until

CLIENTS, PER_CLIENT = 4, 50
TOTAL = CLIENTS * PER_CLIENT

APP_MODULE = textwrap.dedent('''
    """Apps gunicorn loads once in the master (--preload), before forking its workers."""
    import os
    import time

    from flask import Flask

    from instrument.flask import Instrument
    from instrument.wsgi import InstrumentMiddleware

    flask_app = Flask(__name__)


    @flask_app.get("/work/<int:n>")
    def work(n):
        time.sleep(0.002)  # long enough that both workers get a share
        return str(os.getpid())


    Instrument(flask_app)


    def _plain(environ, start_response):
        time.sleep(0.002)
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]


    plain_app = InstrumentMiddleware(_plain)
''')

APPS = {"flask": ("gapp:flask_app", "/work/<int:n>"), "plain": ("gapp:plain_app", None)}


def load(server: GunicornProcess) -> Counter[int]:
    """CLIENTS threads send PER_CLIENT requests each; returns answers per worker pid."""
    answered: Counter[int] = Counter()
    lock = threading.Lock()
    def client(c: int) -> None:
        with requests.Session() as s:
            for i in range(PER_CLIENT):
                r = s.get(f"{server.url}/work/{c * PER_CLIENT + i}", timeout=10)
                r.raise_for_status()
                with lock:
                    answered[int(r.text)] += 1

    in_threads(client, CLIENTS, timeout=60, explain=server.output)
    return answered


def rows_per_pid(db: Path) -> Counter[int]:
    return Counter(dict(query(db, "SELECT pid, COUNT(*) FROM api_metrics GROUP BY pid")))


def write_app(tmp_path: Path) -> Path:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "gapp.py").write_text(APP_MODULE)
    return app_dir


@pytest.mark.parametrize("kind", sorted(APPS))
def test_every_request_recorded_once_by_its_worker(kind: str, tmp_path: Path,
                                                   db_path: Path) -> None:
    """Each worker flushes its own requests while running; rows per pid match answers per pid."""
    target, template = APPS[kind]
    env = {"INSTRUMENT_FLUSH_INTERVAL": "0.1"}
    with gunicorn_server(write_app(tmp_path), target, env=env) as server:
        workers = server.worker_pids()
        answered = load(server)
        assert sum(answered.values()) == TOTAL
        assert set(answered) == workers  # both workers served
        # Rows arrive from the workers' own flushers, not only at exit.
        wait_until(lambda: sum(rows_per_pid(db_path).values()) >= TOTAL, timeout=15,
                   what="rows from running workers")
        assert server.terminate() == 0, server.output()
    assert rows_per_pid(db_path) == answered
    assert server.proc.pid not in rows_per_pid(db_path)
    names = query(db_path, "SELECT endpoint, COUNT(*) FROM api_metrics GROUP BY 1")
    if template:
        assert names == [(template, TOTAL)]
    else:
        assert len(names) == TOTAL and {count for _, count in names} == {1}
    assert query(db_path, "SELECT SUM(count) FROM metric_rollups") == [(TOTAL,)]


@pytest.mark.parametrize("kind", sorted(APPS))
def test_sigterm_loses_no_recorded_request(kind: str, tmp_path: Path, db_path: Path) -> None:
    """With nothing flushed yet, a graceful SIGTERM writes every answered request before exit."""
    target, _ = APPS[kind]
    env = {"INSTRUMENT_FLUSH_INTERVAL": "600"}  # only shutdown flushes
    with gunicorn_server(write_app(tmp_path), target, env=env) as server:
        answered = load(server)
        assert sum(answered.values()) == TOTAL
        assert sum(rows_per_pid(db_path).values()) == 0  # still buffered in the workers
        assert server.terminate() == 0, server.output()
    assert rows_per_pid(db_path) == answered
    assert query(db_path, "SELECT COUNT(*), SUM(error_count) FROM api_metrics") == [(TOTAL, 0)]
