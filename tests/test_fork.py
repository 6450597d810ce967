"""os.fork() with the kit running: the child starts clean and flushes its own samples to SQLite."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import instrument
from instrument.core.runtime import runtime

N_BEFORE, N_PARENT, N_CHILD = 30, 40, 25


def _http(route: str) -> tuple[Any, ...]:
    t0 = time.perf_counter()
    return ("http", t0, t0 + 0.003, 0.0, route, "GET", 200, 10, 20, None, False)


def _counts(db: Path) -> dict[tuple[str, int], int]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT endpoint, pid, COUNT(*) FROM api_metrics GROUP BY 1, 2")
        return {(endpoint, pid): n for endpoint, pid, n in rows}
    finally:
        conn.close()


def _fork(child: Callable[[], int], *, hold: tuple[Any, ...] = ()) -> int:
    """Fork (optionally holding locks across the fork), run ``child`` there, return its pid."""
    for lock in hold:
        lock.acquire()
    try:
        pid = os.fork()
    finally:
        for lock in reversed(hold):
            lock.release()
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


def _report(code: int) -> int:
    """In the child: say what the kit and its threads were doing, then fail with ``code``."""
    print(f"child {os.getpid()}: {instrument.stats()} threads={threading.enumerate()}",
          file=sys.stderr)
    return code


def _exit_code(pid: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not finish in {timeout}s")


def test_child_flushes_its_own_samples_and_never_the_parents(db_path: Path) -> None:
    """The child writes only its samples under its pid; the parent's buffer is written once."""
    instrument.configure(metrics_db=str(db_path), flush_interval=60)
    for _ in range(N_BEFORE):
        runtime.recorder.add(_http("/before"))
    assert instrument.flush(5) is True  # the parent now has an open SQLite connection
    for _ in range(N_PARENT):
        runtime.recorder.add(_http("/parent"))
    parent = os.getpid()

    def child() -> int:
        if len(runtime.recorder.buf) != 0:
            return 2  # inherited the parent's buffered samples
        if instrument.stats()["pid"] != os.getpid():
            return 3
        for _ in range(N_CHILD):
            runtime.recorder.add(_http("/child"))
        if not instrument.flush(10):
            return _report(4)
        counts = _counts(db_path)
        if counts.get(("/child", os.getpid())) != N_CHILD:
            return 5
        if any(route == "/parent" for route, _ in counts):
            return 6  # the child wrote the parent's samples
        return 0

    # Hold the kit's lock and the flusher's condition across the fork: the child must rebuild them.
    pid = _fork(child, hold=(runtime._lock, runtime.flusher._cond))
    assert _exit_code(pid) == 0
    assert len(runtime.recorder.buf) == N_PARENT
    assert instrument.flush(5) is True
    assert _counts(db_path) == {("/before", parent): N_BEFORE, ("/parent", parent): N_PARENT,
                                ("/child", pid): N_CHILD}
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT SUM(count) FROM metric_rollups").fetchone()[0] == (
        N_BEFORE + N_PARENT + N_CHILD)


def test_children_forked_while_the_parent_flushes_all_work(db_path: Path) -> None:
    """Forking in the middle of busy parent flushes never deadlocks or loses a child's rows."""
    instrument.configure(metrics_db=str(db_path), flush_interval=0.01)
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            for _ in range(50):
                runtime.recorder.add(_http("/noise"))
            instrument.flush(5)

    producer = threading.Thread(target=produce)
    producer.start()

    def child() -> int:
        for _ in range(N_CHILD):
            runtime.recorder.add(_http("/kid"))
        if not instrument.flush(15):
            return _report(4)
        return 0 if _counts(db_path).get(("/kid", os.getpid())) == N_CHILD else 5

    pids = []
    try:
        for _ in range(4):
            pids.append(_fork(child))
            time.sleep(0.02)  # let the parent's flusher get back into a write between forks
        codes = [_exit_code(pid) for pid in pids]
    finally:
        stop.set()
        producer.join()
    assert codes == [0] * len(pids)
    assert instrument.flush(5) is True
    counts = _counts(db_path)
    assert all(counts[("/kid", pid)] == N_CHILD for pid in pids)
    assert not any(route == "/noise" and pid in pids for route, pid in counts)


def test_timed_functions_in_the_child_record_under_the_child_pid(db_path: Path) -> None:
    """A @timed call made in a forked child lands in call_metrics with the child's pid."""
    instrument.configure(metrics_db=str(db_path), flush_interval=60)

    @instrument.timed(name="fork.job")
    def job() -> int:
        return 1

    job()

    def child() -> int:
        if sum(job() for _ in range(5)) != 5:
            return 2
        return 0 if instrument.flush(10) else 4

    pid = _fork(child)
    assert _exit_code(pid) == 0
    assert instrument.flush(5) is True
    conn = sqlite3.connect(db_path)
    rows = dict(conn.execute("SELECT pid, COUNT(*) FROM call_metrics WHERE name = 'fork.job'"
                             " GROUP BY pid").fetchall())
    assert rows == {os.getpid(): 1, pid: 5}
