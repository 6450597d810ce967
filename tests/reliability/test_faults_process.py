"""Worker processes killed with SIGKILL mid-flush, and servers stopped with SIGTERM under load.

The apps answer with their pid, so the client knows which process answered
each request and when. A SIGKILLed worker may lose only its own unflushed
buffer: the requests it answered within two flush intervals (plus a second for
the write it died in) of its death.
A SIGTERM loses nothing: every answered request is in the store. The kills are
aimed: the test watches ``/proc/locks`` for the worker holding SQLite's WAL
write lock (byte 120 of the ``-shm`` file) and kills that worker while it holds
it, i.e. in the middle of a flush transaction.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.reliability.harness import FIGURES
from tests.servers import gunicorn_server, listening_socket, query, wait_until

FLUSH = 0.2
APP = textwrap.dedent('''
    import os

    from instrument.asgi import InstrumentMiddleware as ASGIInstrument
    from instrument.wsgi import InstrumentMiddleware


    def _wsgi(environ, start_response):
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]


    async def _asgi(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


    wsgi_app = InstrumentMiddleware(_wsgi)
    asgi_app = ASGIInstrument(_asgi)
''')


@dataclass
class PidLoad:
    """Client threads recording (answering pid, wall time) for every 200 they get."""

    url: str
    threads: int = 4
    answers: list[tuple[int, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _client(self) -> None:
        with requests.Session() as s:
            while not self._stop.is_set():
                try:
                    r = s.get(self.url + "/work", timeout=10)
                except requests.RequestException:
                    continue  # a killed worker's connection, or the server going away
                if r.status_code == 200:
                    self.answers.append((int(r.text), time.time()))

    def __enter__(self) -> PidLoad:
        self._workers = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(self.threads)]
        for t in self._workers:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(15)

    def per_pid(self) -> Counter[int]:
        return Counter(pid for pid, _ in self.answers)


def rows_per_pid(db: Path) -> Counter[int]:
    return Counter(dict(query(db, "SELECT pid, COUNT(*) FROM api_metrics GROUP BY pid")))


def integrity(db: Path) -> str:
    conn = sqlite3.connect(str(db))
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def write_lock_holder(shm: Path) -> int | None:
    """The pid holding SQLite's WAL write lock on this database right now, if any."""
    try:
        inode = os.stat(shm).st_ino
    except FileNotFoundError:
        return None
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            if "->" in parts or len(parts) < 8 or parts[1] != "POSIX" or parts[3] != "WRITE":
                continue
            if parts[5].rsplit(":", 1)[-1] == str(inode) and parts[6] == "120":
                return int(parts[4])
    return None


def app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "killapp.py").write_text(APP)
    return directory


def test_sigkill_mid_flush_loses_only_that_workers_last_interval(tmp_path: Path) -> None:
    """Workers killed holding the write lock: the file stays intact, others lose nothing."""
    db = tmp_path / "metrics.db"
    shm = tmp_path / "metrics.db-shm"
    env = {"INSTRUMENT_METRICS_DB": str(db), "INSTRUMENT_FLUSH_INTERVAL": str(FLUSH)}
    kills: dict[int, float] = {}
    mid_write = 0
    rnd = random.Random(9)
    with gunicorn_server(app_dir(tmp_path), "killapp:wsgi_app", workers=4, env=env) as server, \
            PidLoad(server.url) as load:
        wait_until(lambda: len(load.answers) > 200 and shm.exists(), 30, what="traffic")
        initial = server.worker_pids()
        for _ in range(5):
            time.sleep(rnd.uniform(0.3, 0.6))
            workers = server.worker_pids() - set(kills)
            deadline = time.monotonic() + 3.0
            victim = None
            while victim is None and time.monotonic() < deadline:
                holder = write_lock_holder(shm)
                if holder in workers:
                    victim = holder
            if victim is not None:
                mid_write += 1
            else:  # no flush caught in 3 s: kill one anyway
                victim = rnd.choice(sorted(workers))
            os.kill(victim, signal.SIGKILL)
            kills[victim] = time.time()
        wait_until(lambda: len(server.worker_pids() - set(kills)) >= 4, 30,
                   what="replacement workers")
        before = len(load.answers)
        wait_until(lambda: len(load.answers) > before + 100, 30, what="traffic after the kills")
        replacements = server.worker_pids() - initial
        load.__exit__()
        assert server.terminate() == 0, server.output()
    assert integrity(db) == "ok"
    assert mid_write >= 3, f"only {mid_write} of 5 kills caught a worker inside a flush"
    answered, rows = load.per_pid(), rows_per_pid(db)
    lost_total = 0
    for pid, count in answered.items():
        if pid not in kills:
            assert rows[pid] == count, f"worker {pid} was not killed but lost rows"
            continue
        lost = count - rows[pid]
        assert lost >= 0
        window = [t for p, t in load.answers if p == pid and
                  kills[pid] - (2 * FLUSH + 1.0) <= t <= kills[pid] + 0.5]
        assert lost <= len(window), (pid, lost, len(window))
        lost_total += lost
    assert set(rows) - set(answered) == set()  # no rows from nowhere
    assert replacements and all(rows[pid] > 0 for pid in replacements)  # they record too
    FIGURES["SIGKILLed workers (mid-flush)"] += mid_write
    FIGURES["faults injected and survived"] += 1
    FIGURES["requests lost to SIGKILL"] += lost_total
    FIGURES["requests answered in SIGKILL test"] += len(load.answers)


def test_sigterm_under_load_gunicorn_loses_nothing(tmp_path: Path) -> None:
    """SIGTERM to gunicorn while clients hammer it: every answered request is stored."""
    db = tmp_path / "metrics.db"
    env = {"INSTRUMENT_METRICS_DB": str(db), "INSTRUMENT_FLUSH_INTERVAL": "5"}
    with gunicorn_server(app_dir(tmp_path), "killapp:wsgi_app", workers=4, env=env) as server, \
            PidLoad(server.url) as load:
        wait_until(lambda: len(load.answers) > 300, 30, what="traffic")
        assert server.terminate() == 0, server.output()  # clients still sending
    assert rows_per_pid(db) == load.per_pid()
    assert integrity(db) == "ok"
    FIGURES["faults injected and survived"] += 1
    FIGURES["requests answered then SIGTERM, all stored"] += len(load.answers)


def test_sigterm_under_load_uvicorn_loses_nothing(tmp_path: Path) -> None:
    """SIGTERM to uvicorn while clients hammer it: every answered request is stored."""
    db = tmp_path / "metrics.db"
    sock = listening_socket()
    env = {**os.environ, "INSTRUMENT_METRICS_DB": str(db), "INSTRUMENT_FLUSH_INTERVAL": "5"}
    log = (tmp_path / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "killapp:asgi_app", "--fd", str(sock.fileno()),
         "--app-dir", str(app_dir(tmp_path)), "--log-level", "warning", "--no-access-log"],
        env=env, pass_fds=[sock.fileno()], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    try:
        with PidLoad(url) as load:
            wait_until(lambda: len(load.answers) > 300, 30, what="traffic")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises what it caught
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert rows_per_pid(db) == Counter({proc.pid: len(load.answers)})
    assert integrity(db) == "ok"
    FIGURES["faults injected and survived"] += 1
    FIGURES["requests answered then SIGTERM, all stored"] += len(load.answers)
