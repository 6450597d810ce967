"""The in-flight gauge end to end: gunicorn workers, their flushers, the store and a scrape.

Requests are held open inside a real gunicorn (three sync workers, so each held
request is in a different process) by a file-based gate; ``instrument exporter``
reads the shared SQLite file, as Prometheus would scrape it. The storage
contract runs on SQLite and a throwaway PostgreSQL cluster alike.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from instrument.backends.postgresql import PostgreSQLBackend
from instrument.backends.sqlite import SQLiteBackend
from instrument.core import inflight as _inflight
from instrument.core.aggregate import Aggregator
from instrument.core.batch import Batch, InFlight
from instrument.core.buffer import Recorder
from instrument.core.flusher import Flusher
from instrument.exporters.snapshot import PostgreSQLSource, SQLiteSource
from instrument.prometheus import InstrumentCollector
from instrument.storage import inflight as _stored_in_flight
from instrument.storage.inflight import read_in_flight
from instrument.storage.pg_read import PgQueryConnection
from instrument.testing import MemoryBackend
from tests.pg_cluster import PgCluster, pg_cluster
from tests.servers import gunicorn_server, wait_until

GAUGE = "instrument_http_requests_in_flight"
WORKERS = 3

APP_MODULE = textwrap.dedent('''
    """/hold waits at a file gate (a marker per arrival); gunicorn preloads it."""
    import os
    import pathlib
    import time

    from instrument.wsgi import InstrumentMiddleware

    GATE = pathlib.Path(os.environ["INFLIGHT_GATE"])


    def _app(environ, start_response):
        if environ["PATH_INFO"] == "/hold":
            (GATE / f"arrived-{os.getpid()}-{environ['QUERY_STRING']}").touch()
            deadline = time.monotonic() + 60
            while not (GATE / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]


    app = InstrumentMiddleware(_app)
''')


# -- helpers -----------------------------------------------------------------------------
@contextlib.contextmanager
def exporter(db: Path) -> Iterator[str]:
    """``instrument exporter`` over ``db`` on a free port; yields its /metrics URL."""
    proc = subprocess.Popen([sys.executable, "-m", "instrument.cli", "exporter", "--db", str(db),
                             "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving http://" in line, line
        yield line.split("serving ")[1].strip()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def scrape(url: str) -> tuple[float, str]:
    """The gauge's value in one scrape of ``url``, and the scrape's text."""
    text = requests.get(url, timeout=10).text
    values = [s.value for fam in text_string_to_metric_families(text) if fam.name == GAUGE
              for s in fam.samples]
    assert len(values) == 1, text
    return values[0], text


def settles(url: str, expected: float, timeout: float) -> float:
    """Seconds until a scrape of ``url`` reports ``expected`` in flight (fails after timeout)."""
    start = time.monotonic()
    wait_until(lambda: scrape(url)[0] == expected, timeout=timeout, interval=0.05,
               what=f"{GAUGE} == {expected} (last: {scrape(url)[0]})")
    return time.monotonic() - start


class Held:
    """``n`` client threads, each holding one /hold request open until the gate opens."""

    def __init__(self, base: str, gate: Path, n: int) -> None:
        self.gate = gate
        self.results: dict[int, Any] = {}
        self.threads = [threading.Thread(target=self._get, args=(base, i)) for i in range(n)]
        for t in self.threads:
            t.start()
        wait_until(lambda: len(self.arrivals()) == n, timeout=15, what=f"{n} requests to arrive")

    def _get(self, base: str, i: int) -> None:
        try:
            self.results[i] = requests.get(f"{base}/hold?{i}", timeout=30).status_code
        except requests.RequestException as exc:
            self.results[i] = exc

    def arrivals(self) -> dict[int, int]:
        """Held request number -> the pid of the worker serving it."""
        out = {}
        for p in self.gate.glob("arrived-*"):
            _, pid, n = p.name.split("-")
            out[int(n)] = int(pid)
        return out

    def release(self) -> None:
        (self.gate / "release").touch()
        for t in self.threads:
            t.join(30)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    d = tmp_path / "app"
    d.mkdir()
    (d / "iapp.py").write_text(APP_MODULE)
    (tmp_path / "gate").mkdir()
    return d


def _env(tmp_path: Path) -> dict[str, str]:
    return {"INSTRUMENT_METRICS_DB": str(tmp_path / "metrics.db"),
            "INSTRUMENT_FLUSH_INTERVAL": "0.2", "INSTRUMENT_PROMETHEUS": "true",
            "INFLIGHT_GATE": str(tmp_path / "gate")}


# -- real gunicorn -----------------------------------------------------------------------
def test_gauge_sums_held_requests_over_workers_then_returns_to_zero(
        tmp_path: Path, app_dir: Path) -> None:
    """Three requests held in three workers scrape as 3 in flight, and as 0 once they end."""
    db = tmp_path / "metrics.db"
    with gunicorn_server(app_dir, "iapp:app", workers=WORKERS, env=_env(tmp_path)) as server:
        held = Held(server.url, tmp_path / "gate", WORKERS)
        assert len(set(held.arrivals().values())) == WORKERS  # one per sync worker
        with exporter(db) as url:
            settles(url, WORKERS, timeout=10)
            rows = SQLiteSource(str(db)).read()
            assert rows.in_flight_processes == WORKERS  # a sum over processes, not one count
            _, busy_text = scrape(url)
            held.release()
            assert held.results == dict.fromkeys(range(WORKERS), 200)
            settles(url, 0, timeout=10)  # each worker wrote its 0 without any new sample
        in_app, idle_text = scrape(f"{server.url}/metrics")  # answered by a worker itself
        assert in_app == 0
        assert server.terminate() == 0, server.output()
    for text in (busy_text, idle_text):
        check = subprocess.run(["promtool", "check", "metrics"], input=text,
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
    assert f"# HELP {GAUGE} HTTP requests being served" in busy_text


def test_a_worker_killed_while_holding_requests_stops_counting(
        tmp_path: Path, app_dir: Path) -> None:
    """SIGKILL leaves a worker's last count behind; it stops counting once not renewed."""
    db = tmp_path / "metrics.db"
    with gunicorn_server(app_dir, "iapp:app", workers=WORKERS, env=_env(tmp_path)) as server:
        held = Held(server.url, tmp_path / "gate", WORKERS)
        with exporter(db) as url:
            settles(url, WORKERS, timeout=10)
            victim = held.arrivals()[0]
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_until(lambda: victim not in server.worker_pids(), timeout=10,
                       what="the killed worker to be reaped")
            settles(url, WORKERS - 1, timeout=_inflight.MIN_WINDOW + 10)
            gone_after = time.monotonic() - killed_at
            # the dead worker's row was renewed at most window / 3 before it died
            assert gone_after <= _inflight.MIN_WINDOW + 5.0
            assert scrape(url)[0] == WORKERS - 1  # the live workers still count theirs
            held.release()
            settles(url, 0, timeout=10)
        assert isinstance(held.results[0], requests.RequestException)
        assert [held.results[i] for i in (1, 2)] == [200, 200]
        assert server.terminate() == 0, server.output()


# -- the flusher's side ------------------------------------------------------------------
def test_flusher_sends_readings_alone_only_when_they_change_or_are_due(tmp_path: Path) -> None:
    """An idle process writes no reading; a change is written without samples, and renewed."""
    db = tmp_path / "gauge.db"
    recorder = Recorder()
    lite, memory = SQLiteBackend(str(db)), MemoryBackend()
    flusher = Flusher(recorder, [lite, memory], interval=0.2)

    def row() -> list[tuple[Any, ...]]:
        conn = lite._connection()
        return conn.execute("SELECT pid, in_flight, written_at FROM process_in_flight").fetchall()

    assert flusher.flush()
    assert not db.exists() or row() == []  # nothing in flight, nothing written
    for _ in range(2):
        next(recorder.started)
    assert flusher.flush()
    (first,) = row()
    assert first[:2] == (os.getpid(), 2)
    assert memory.batches == []  # readings alone go only to backends that store them
    assert flusher.flush() and row() == [first]  # unchanged and not due: not rewritten
    flusher.in_flight.renew = 0.0
    assert flusher.flush()
    assert row()[0][2] > first[2]  # a nonzero count is renewed, so it stays counted
    next(recorder.ended)
    next(recorder.ended)
    now = time.perf_counter()
    recorder.add(("http", now, now + 0.001, 0.0, "/x", "GET", 200, 0, 0, None, False))
    assert flusher.flush()
    assert row()[0][1] == 0 and memory.batches[-1].in_flight is not None  # on the sample batch
    assert SQLiteSource(str(db)).read().in_flight == 0
    flusher.shutdown(5.0)


# -- storage contract: SQLite and PostgreSQL ---------------------------------------------
@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    with pg_cluster() as cluster:
        yield cluster


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_store_keeps_one_row_per_process_and_sums_the_live_ones(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Either store sums unexpired readings per (host, pid), ignores late ones, prunes old ones."""
    monkeypatch.setattr(_stored_in_flight, "_next_prune", {})
    if kind == "sqlite":
        target = str(tmp_path / "store.db")
        backend: Any = SQLiteBackend(target)
        source: Any = SQLiteSource(target)
    else:
        target = request.getfixturevalue("pg").new_schema()
        backend = PostgreSQLBackend(target)
        source = PostgreSQLSource(target, host=socket.gethostname())
    now = time.time()  # after the cluster started: live readings count for 30 s from here

    def write(value: int, pid: int, at: float, batch: Batch | None = None) -> None:
        batch = batch or Batch()
        batch.in_flight = InFlight(value, pid, at, at + 30.0)
        backend.write(batch)

    try:
        write(1, 101, now - 2 * 3600)  # dead two hours ago: pruned by the next write
        monkeypatch.setattr(_stored_in_flight, "_next_prune", {})
        t0 = time.perf_counter()
        sample = Aggregator().aggregate(
            [("http", t0, t0 + 0.01, 0.0, "/a", "GET", 200, 0, 0, None, False)])
        write(3, 102, now, sample)  # on a batch with samples
        write(4, 103, now - 1)
        write(9, 103, now - 2)  # an older reading retried late: never rewinds the row
        write(7, 104, now - 90)  # expired a minute ago: kept, not counted
        snap = source.read()
        assert (snap.in_flight, snap.in_flight_processes) == (7, 2)
        samples = {s.name: s.value for fam in InstrumentCollector(source).collect()
                   for s in fam.samples}
        assert samples[GAUGE] == 7
        assert samples["instrument_http_requests_total"] == 1
        conn: Any = (backend._connection() if kind == "sqlite"
                     else PgQueryConnection(backend._connection()))
        pids = sorted(r[0] for r in conn.execute("SELECT pid FROM process_in_flight").fetchall())
        assert pids == [102, 103, 104]
        assert read_in_flight(conn, "another-host", "?") == (0, 0)
        assert read_in_flight(conn, socket.gethostname(), "?", now=now + 31) == (0, 0)
    finally:
        backend.close()
        if kind == "postgresql":
            source.close()
