"""Store faults injected for real while clients keep the app busy: nothing reaches a request.

Every test serves an instrumented app over HTTP with three client threads
running for the whole fault, then checks the four promises: no request failed
and no exception escaped the middleware, no thread died, the health endpoint
named the fault while it lasted, and the kit recovered without help (no
``flush()`` calls: the flusher's own retries), with every answered request
stored exactly once where the store survived the fault.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

import instrument
from instrument.backends.sqlite import SQLiteBackend
from instrument.core.batch import Batch
from tests.reliability.harness import (
    FIGURES,
    TOKEN,
    Load,
    Served,
    chattr,
    kit_backend,
    reasons,
    served_app,
    tmpfs,
    wait_health,
)
from tests.servers import wait_until

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def files(db: Path) -> list[Path]:
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def settle(app: Served, load: Load, errors: list[str]) -> None:
    """After the load stopped: every answer stored exactly once, by the flusher alone."""
    answered = load.ok
    wait_until(lambda: app.rows() >= answered, 30, what=f"{answered} rows")
    time.sleep(0.3)  # two more flush intervals: a duplicate would show up now
    assert app.rows() == answered
    check_clean(app, load, errors)


def check_clean(app: Served, load: Load, errors: list[str]) -> None:
    assert not load.bad, load.bad
    assert not app.guard.escaped
    assert not errors
    stats = instrument.stats()
    assert stats["alive"] and stats["cycle_errors"] == 0 and stats["dropped"] == 0
    FIGURES["faults injected and survived"] += 1
    FIGURES["requests answered during fault tests"] += load.ok


def test_lock_held_by_another_process(tmp_path: Path, thread_errors: list[str]) -> None:
    """A write lock held by another process for seconds delays rows, never requests; all arrive."""
    db = tmp_path / "metrics.db"
    with served_app(db, backends=[SQLiteBackend(str(db), timeout=0.3)]) as app, \
            Load(app.url) as load:
        load.more(30)
        wait_until(lambda: app.rows() > 0, what="first rows")
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert locker.stdout is not None and locker.stdin is not None
            assert locker.stdout.readline() == b"locked\n"
            held = time.monotonic()
            body = wait_health(app, lambda b: "database is locked" in reasons(b),
                               what="the lock in health")
            assert body["status"] in ("degraded", "failing")
            load.more(100)  # served while the store is locked
            rows_while_locked = app.rows()
            while time.monotonic() - held < 2.5:
                time.sleep(0.05)
            assert app.rows() == rows_while_locked  # really locked: nothing got through
        finally:
            if locker.stdin is not None:
                locker.stdin.write(b"\n")
                locker.stdin.close()
            locker.wait(10)
        wait_health(app, lambda b: b["status"] == "ok", what="recovery")
        load.more(30)
    settle(app, load, thread_errors)
    assert kit_backend()["errors_total"] >= 1


def fill(path: Path) -> int:
    """Write zeros to ``path`` until the file system says it is full; returns bytes written."""
    written = 0
    chunk = b"\0" * 4096
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return written


def test_disk_full(tmp_path: Path, thread_errors: list[str]) -> None:
    """With the store's file system full, requests go on, health says so, and rows catch up."""
    with tmpfs(tmp_path / "small", "2M") as mount:
        db = mount / "metrics.db"
        with served_app(db) as app, Load(app.url) as load:
            load.more(30)
            wait_until(lambda: app.rows() > 0, what="first rows")
            filler = mount / "filler"
            assert fill(filler) > 0
            body = wait_health(app, lambda b: "full" in reasons(b), what="disk full in health")
            assert "database or disk is full" in reasons(body)
            load.more(100)
            filler.unlink()
            wait_health(app, lambda b: b["status"] == "ok", what="recovery")
            load.more(30)
        settle(app, load, thread_errors)
        instrument.shutdown()  # close the connection before the mount goes away
        assert _integrity(db) == "ok"


def _integrity(db: Path) -> str:
    import sqlite3

    conn = sqlite3.connect(str(db))
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def test_database_made_read_only(tmp_path: Path, thread_errors: list[str]) -> None:
    """Files made immutable (chattr +i, which binds root too) hold rows back until writable."""
    db = tmp_path / "metrics.db"
    with served_app(db) as app, Load(app.url) as load:
        load.more(30)
        wait_until(lambda: app.rows() > 0, what="first rows")
        try:
            chattr("+i", *files(db))
            body = wait_health(app, lambda b: "sqlite" in reasons(b), what="read-only in health")
            assert body["status"] in ("degraded", "failing")
            load.more(100)
        finally:
            chattr("-i", *files(db))
        wait_health(app, lambda b: b["status"] == "ok", what="recovery")
        load.more(30)
    settle(app, load, thread_errors)


def test_database_deleted(tmp_path: Path, thread_errors: list[str]) -> None:
    """A deleted store is noticed and recreated; every request answered after it is in the new one.

    Rows written before the deletion are gone with the file (that is what deleting
    means); none written after it may go to the deleted inode.
    """
    db = tmp_path / "metrics.db"
    with served_app(db) as app:
        with Load(app.url) as load:
            load.more(30)
            wait_until(lambda: app.rows() > 0, what="first rows")
            for path in files(db):
                path.unlink(missing_ok=True)
            ok_at_delete = load.ok
            wait_until(lambda: app.rows() > 0, 20, what="rows in a recreated file")
            assert "deleted" in (kit_backend()["last_error"] or "")
            load.more(100)
            wait_health(app, lambda b: b["status"] == "ok", what="recovery")
        answered = load.ok
        wait_until(lambda: app.rows() >= answered - ok_at_delete, 30, what="rows after delete")
        time.sleep(0.3)
        assert answered - ok_at_delete <= app.rows() <= answered
        # The dashboard reads the new file, not the deleted one it had open.
        r = requests.get(app.url + "/api/v1/monitoring/metrics/summary?hours=1",
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert r.status_code == 200
        assert r.json()["requests"]["requests"] == app.rows()
    check_clean(app, load, thread_errors)


class Broken:
    """A backend that raises on every call (every kind of exception) until ``fixed``."""

    name = "broken"
    errors: tuple[type[BaseException], ...] = (RuntimeError, OSError, MemoryError, SystemExit,
                                               KeyboardInterrupt)

    def __init__(self) -> None:
        self.fixed = False
        self.calls = 0
        self.samples = 0

    def write(self, batch: Batch) -> None:
        self.calls += 1
        if not self.fixed:
            raise self.errors[self.calls % len(self.errors)](f"injected failure {self.calls}")
        self.samples += len(batch)

    def close(self) -> None:
        pass


def test_backend_raising_on_every_call(tmp_path: Path, thread_errors: list[str]) -> None:
    """A backend raising anything (SystemExit included) never holds back SQLite or a request."""
    db = tmp_path / "metrics.db"
    broken = Broken()
    backends: list[Any] = [SQLiteBackend(str(db)), broken]
    with served_app(db, backends=backends) as app, Load(app.url) as load:
        body = wait_health(app, lambda b: "'broken' failed 3 time(s)" in reasons(b),
                           what="the broken backend in health")
        assert body["status"] == "degraded"
        rows = app.rows()
        load.more(100)
        wait_until(lambda: app.rows() > rows + 50, what="SQLite rows during the fault")
        assert broken.samples == 0
        broken.fixed = True
        wait_health(app, lambda b: b["status"] == "ok", what="recovery")
        load.more(30)
    settle(app, load, thread_errors)
    wait_until(lambda: broken.samples == load.ok, 10, what="the broken backend catching up")
    assert broken.calls > 3
