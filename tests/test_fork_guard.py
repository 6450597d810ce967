"""Forking while other kit threads are inside SQLite: every child can still write the store.

A thread that holds one of SQLite's in-process mutexes or file locks when another thread
forks leaves it held forever in the child, whose own writes to the same file then hang.
The kit's at-fork hook must wait until no kit thread is inside SQLite (see
``instrument/core/forkguard.py``); these tests fork repeatedly under busy readers of every kind.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import instrument
from instrument import logsearch, queries
from instrument.alerting.store import AlertStore
from instrument.backends.sqlite import connect
from instrument.core import forkguard as _forkguard
from instrument.core.runtime import runtime
from instrument.dashboard._store import Connections, latest_system
from instrument.exporters.snapshot import SQLiteSource

FORKS = 12
CHILD_ROWS = 20
DEADLINE = 8.0  # seconds for all children together; a healthy child needs well under 1 s


def _http(route: str) -> tuple[Any, ...]:
    t0 = time.perf_counter()
    return ("http", t0, t0 + 0.002, 0.0, route, "GET", 200, 10, 20, None, False)


def _seed(db: Path, alerts: Path) -> None:
    """A metrics file with rows, rollups and logs, and an alerts file, for the readers."""
    conn = connect(str(db))
    conn.close()
    instrument.configure(metrics_db=str(db), flush_interval=60)
    for i in range(300):
        runtime.recorder.add(_http(f"/seed/{i % 7}"))
    assert instrument.flush(10) is True
    runtime.shutdown(5.0)
    AlertStore(str(alerts)).close()


def _readers(db: Path, alerts: Path) -> tuple[list[Callable[[], Any]], Callable[[], None]]:
    """One read of each kind the kit does (queries, log search, snapshot, dashboard, alerts),
    and what closes their connections."""
    store = AlertStore(str(alerts))
    pool = Connections(str(db))
    source = SQLiteSource(str(db))

    def dashboard() -> None:
        with pool.connection() as conn:
            latest_system(conn)
            for _ in conn.execute("SELECT minute, count FROM metric_rollups"):
                pass

    return [
        lambda: queries.summary(str(db), 24),
        lambda: queries.timeseries(str(db), time.time() - 3600),
        lambda: logsearch.search_logs(str(db), limit=50),
        source.read,
        dashboard,
        lambda: store.history(limit=20),
        lambda: store.changed(),
    ], lambda: (pool.close(), store.close())


def _child(db: Path) -> int:
    """In a forked child: configure the kit on the shared file, record, flush, verify."""
    instrument.configure(metrics_db=str(db), flush_interval=60)
    for _ in range(CHILD_ROWS):
        runtime.recorder.add(_http("/child"))
    if not instrument.flush(DEADLINE + 5):  # a hung flush is killed at DEADLINE: 'hung'
        print(f"child {os.getpid()}: flush failed: {instrument.stats()}", file=sys.stderr)
        return 4
    conn = sqlite3.connect(db, timeout=DEADLINE)
    try:
        n = conn.execute("SELECT COUNT(*) FROM api_metrics WHERE pid = ?",
                         (os.getpid(),)).fetchone()[0]
    finally:
        conn.close()
    return 0 if n == CHILD_ROWS else 5


def _fork(child: Callable[[], int]) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, reports through the exit code
        code = 90
        try:
            code = child()
        except BaseException:
            traceback.print_exc()
            code = 91
        finally:
            os._exit(code)
    return pid


def _reap(pids: list[int], deadline: float) -> dict[int, int | str]:
    """Exit codes by pid; a child still running at ``deadline`` is killed and reported 'hung'."""
    out: dict[int, int | str] = {}
    while len(out) < len(pids):
        for pid in pids:
            if pid not in out:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    out[pid] = os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            for pid in pids:
                if pid not in out:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    out[pid] = "hung"
        time.sleep(0.005)
    return out


def test_children_forked_under_busy_sqlite_readers_can_all_write(tmp_path: Path) -> None:
    """Children forked while kit threads read SQLite all flush their rows (none hangs)."""
    db, alerts = tmp_path / "metrics.db", tmp_path / "alerts.db"
    _seed(db, alerts)
    readers, close = _readers(db, alerts)
    stop = threading.Event()
    reads = [0] * len(readers)
    errors: list[BaseException] = []

    def loop(i: int) -> None:
        while not stop.is_set():
            try:
                readers[i]()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return
            reads[i] += 1

    threads = [threading.Thread(target=loop, args=(i,), daemon=True)
               for i in range(len(readers))]
    for t in threads:
        t.start()
    pids: list[int] = []
    try:
        while min(reads) == 0 and not errors:  # every reader is up and looping
            time.sleep(0.001)
        for _ in range(FORKS):
            pids.append(_fork(lambda: _child(db)))
            time.sleep(0.01)
        codes = _reap(pids, time.monotonic() + DEADLINE)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        close()
    assert not errors, errors
    assert sorted(map(str, codes.values())) == ["0"] * FORKS, Counter(codes.values())
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM api_metrics WHERE endpoint = '/child'"
                            ).fetchone()[0] == FORKS * CHILD_ROWS
    finally:
        conn.close()


def test_a_fork_from_inside_a_section_does_not_wait_for_itself(tmp_path: Path) -> None:
    """A thread that forks while inside a SQLite section forks at once, and its child works."""
    db = tmp_path / "metrics.db"
    connect(str(db)).close()
    with _forkguard.sqlite_section(), _forkguard.sqlite_section():
        started = time.monotonic()
        pid = _fork(lambda: _child(db))
        forked_in = time.monotonic() - started
    assert forked_in < 1.0
    assert _reap([pid], time.monotonic() + DEADLINE) == {pid: 0}


def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_fork_waits_for_a_section_in_another_thread_and_blocks_new_ones() -> None:
    """os.fork waits until another thread leaves its section; sections started meanwhile wait."""
    inside = threading.Event()
    order: list[str] = []
    seen: dict[str, bool] = {}

    def holder() -> None:
        with _forkguard.sqlite_section():
            inside.set()
            # The fork has started and waits for us; the late thread is queued behind it.
            seen["fork pending"] = _until(_forkguard.fork_pending)
            seen["late waits"] = _until(lambda: _forkguard._guard().waiting == 1)
            seen["late outside"] = "late entered" not in order
            order.append("left")

    def late() -> None:
        _until(_forkguard.fork_pending)
        with _forkguard.sqlite_section():
            order.append("late entered")

    threads = [threading.Thread(target=holder), threading.Thread(target=late)]
    threads[0].start()
    assert inside.wait(10)
    threads[1].start()
    pid = _fork(lambda: 0)
    order.append("forked")
    for t in threads:
        t.join(10)
    assert _reap([pid], time.monotonic() + DEADLINE) == {pid: 0}
    assert seen == {"fork pending": True, "late waits": True, "late outside": True}
    assert order[0] == "left" and sorted(order[1:]) == ["forked", "late entered"]


def test_readers_in_different_threads_are_inside_at_once() -> None:
    """Sections are shared: two threads can be inside at the same time (reads never serialise)."""
    both = threading.Barrier(2, timeout=5)

    def reader() -> None:
        with _forkguard.sqlite_section():
            both.wait()  # breaks (raises) unless the other thread gets in too

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not both.broken


def test_section_cost_is_small() -> None:
    """Entering and leaving a section, nested or not, costs microseconds (not request path)."""
    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        with _forkguard.sqlite_section(), _forkguard.sqlite_section():
            pass
    per = (time.perf_counter() - started) / (2 * n)
    assert per < 20e-6, per
