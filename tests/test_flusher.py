"""The flusher: flush semantics, per-backend retry and backoff, isolation, shutdown, no threads."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import instrument
from instrument.core import flusher as _flusher
from instrument.core.batch import Batch
from instrument.core.runtime import runtime
from instrument.testing import FailingBackend, MemoryBackend


def _probe(i: int) -> None:
    runtime.recorder.add(("probe", i))


def _probe_ids(backend: MemoryBackend) -> list[int]:
    return [s[1] for b in backend.batches for s in b.other.get("probe", ())]


def _wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


class GatedBackend(MemoryBackend):
    """Blocks every write until ``gate`` is set (a stuck webhook or disk)."""

    name = "gated"

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def write(self, batch: Batch) -> None:
        self.entered.set()
        if not self.gate.wait(10):
            raise TimeoutError("gate never opened")
        super().write(batch)


class TimedFailingBackend(FailingBackend):
    """FailingBackend that notes when each attempt and each success happened."""

    def __init__(self, failures: int) -> None:
        super().__init__(failures=failures)
        self.attempt_times: list[float] = []
        self.success_times: list[float] = []

    def write(self, batch: Batch) -> None:
        self.attempt_times.append(time.monotonic())
        super().write(batch)
        self.success_times.append(time.monotonic())


class TimedMemoryBackend(MemoryBackend):
    """MemoryBackend that notes when each write happened."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def write(self, batch: Batch) -> None:
        super().write(batch)
        self.times.append(time.monotonic())


class RaisingBackend(MemoryBackend):
    """Raises on every write and on close."""

    name = "raising"

    def write(self, batch: Batch) -> None:
        raise RuntimeError("backend exploded")

    def close(self) -> None:
        raise RuntimeError("close exploded")


def test_flush_returns_only_when_every_backend_has_everything_recorded_before() -> None:
    """After flush() returns True, every sample recorded before the call is in every backend."""
    fast, slow = MemoryBackend(), TimedMemoryBackend()
    instrument.configure(backends=[fast, slow], flush_interval=60, buffer_size=1_000_000)
    stop = threading.Event()

    def background() -> None:
        i = 0
        while not stop.is_set():
            runtime.recorder.add(("noise", i))
            i += 1
            if i % 50 == 0:
                time.sleep(0.0005)

    noise = threading.Thread(target=background)
    noise.start()
    try:
        sent: list[int] = []
        for rnd in range(20):
            for j in range(50):
                _probe(rnd * 50 + j)
                sent.append(rnd * 50 + j)
            assert instrument.flush(5.0) is True
            assert sorted(_probe_ids(fast)) == sent
            assert sorted(_probe_ids(slow)) == sent
    finally:
        stop.set()
        noise.join()


def test_flush_waits_for_a_slow_backend() -> None:
    """flush() does not return True while a backend is still writing the data."""
    gated = GatedBackend()
    instrument.configure(backends=[gated], flush_interval=60)
    for i in range(10):
        _probe(i)
    assert instrument.flush(0.3) is False
    assert gated.entered.is_set()
    assert _probe_ids(gated) == []
    gated.gate.set()
    assert instrument.flush(5.0) is True
    assert _probe_ids(gated) == list(range(10))


def test_flush_with_a_failing_backend_times_out_and_stats_say_why() -> None:
    """A backend that keeps failing makes flush return False after the timeout; stats show why."""
    failing = FailingBackend(failures=10**9)
    instrument.configure(backends=[failing], flush_interval=60)
    for i in range(5):
        _probe(i)
    started = time.monotonic()
    assert instrument.flush(0.5) is False
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 2.0
    stats = instrument.stats()
    (backend,) = stats["backends"]
    assert backend["name"] == "failing"
    assert backend["healthy"] is False
    assert backend["pending_batches"] >= 1
    assert backend["consecutive_failures"] >= 1
    assert backend["last_error"].startswith("OSError: injected failure")
    assert backend["samples_written"] == 0
    assert instrument.shutdown(0.2) is False  # gives up on the failing backend at its deadline


def test_failing_backend_is_retried_with_backoff_and_gets_every_sample_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend failing 3 times is retried with growing delays, then receives every sample once."""
    monkeypatch.setattr(_flusher, "_BACKOFF_MIN", 0.1)
    healthy = TimedMemoryBackend()
    failing = TimedFailingBackend(failures=3)
    instrument.configure(backends=[healthy, failing], flush_interval=0.02)
    for i in range(50):
        _probe(i)
    assert healthy.written.wait(5)
    assert _wait_for(lambda: failing.attempts >= 1)
    for i in range(50, 100):  # recorded while the failing backend backs off: a second batch
        _probe(i)
    assert _wait_for(lambda: len(_probe_ids(healthy)) == 100)
    healthy_done = time.monotonic()
    assert failing.written.wait(5)
    assert instrument.flush(5.0) is True

    assert sorted(_probe_ids(healthy)) == list(range(100))
    assert sorted(_probe_ids(failing)) == list(range(100))
    # The healthy backend had everything before the failing one succeeded even once.
    assert healthy_done < failing.success_times[0]
    # Retries wait at least 0.1, 0.2, 0.4 s: exponential backoff from _BACKOFF_MIN.
    gaps = [b - a for a, b in itertools.pairwise(failing.attempt_times)]
    for n, gap in enumerate(gaps[:3]):
        assert gap >= 0.1 * 2**n - 0.01, gaps
    (h, f) = instrument.stats()["backends"]
    assert h["errors_total"] == 0 and h["samples_written"] == 100
    assert f["healthy"] is True and f["pending_batches"] == 0
    assert f["errors_total"] == 3 and f["samples_written"] == 100
    assert f["last_error"] == "OSError: injected failure 3"


def test_a_raising_backend_never_propagates_into_the_caller() -> None:
    """Backends raising on write and close affect neither the app's calls nor flush and shutdown."""
    raising, healthy = RaisingBackend(), MemoryBackend()
    instrument.configure(backends=[raising, healthy], flush_interval=0.02)

    @instrument.timed(name="work")
    def work(x: int) -> int:
        return x * 2

    assert [work(i) for i in range(20)] == [i * 2 for i in range(20)]
    assert instrument.flush(0.3) is False
    stats = instrument.stats()
    assert stats["alive"] is True
    assert stats["backends"][0]["last_error"] == "RuntimeError: backend exploded"
    assert healthy.get_sample_value("call", "work") == 20
    assert instrument.shutdown(0.3) is False
    assert healthy.closed is True


def test_high_water_mark_flushes_before_the_interval() -> None:
    """Filling half the buffer wakes the flusher long before a 60 s interval."""
    memory = MemoryBackend()
    instrument.configure(backends=[memory], flush_interval=60, buffer_size=64)
    half = runtime.recorder.high  # a probe takes one slot
    for i in range(half + 8):
        _probe(i)
    assert memory.written.wait(5)
    assert len(_probe_ids(memory)) >= half + 1


def test_overflow_is_dropped_and_counted_in_stats() -> None:
    """Samples that do not fit are counted as dropped; flushed + dropped equals sent."""
    memory = MemoryBackend()
    instrument.configure(backends=[memory], flush_interval=60, buffer_size=16)
    before = instrument.stats()["dropped"]
    for i in range(500):
        _probe(i)
    assert instrument.flush(5.0) is True
    dropped = instrument.stats()["dropped"] - before
    assert dropped > 0
    assert len(_probe_ids(memory)) + dropped == 500


def test_shutdown_flushes_what_is_buffered() -> None:
    """shutdown() writes buffered samples even with a long interval, then closes the backends."""
    memory = MemoryBackend()
    instrument.configure(backends=[memory], flush_interval=60)
    for i in range(25):
        _probe(i)
    assert _probe_ids(memory) == []
    assert instrument.shutdown(5.0) is True
    assert _probe_ids(memory) == list(range(25))
    assert memory.closed is True
    assert instrument.stats()["alive"] is False


def test_shutdown_keeps_its_deadline_with_a_stuck_backend() -> None:
    """A backend that never returns cannot hold shutdown much past its timeout."""
    gated = GatedBackend()
    instrument.configure(backends=[gated], flush_interval=60)
    _probe(1)
    started = time.monotonic()
    try:
        assert instrument.shutdown(0.5) is False
        elapsed = time.monotonic() - started
    finally:
        gated.gate.set()
    assert elapsed < 0.8, elapsed


def test_reconfigure_flushes_into_the_previous_backends() -> None:
    """configure() again first delivers what was buffered to the backends it replaces."""
    old, new = MemoryBackend(), MemoryBackend()
    instrument.configure(backends=[old], flush_interval=60)
    for i in range(7):
        _probe(i)
    instrument.configure(backends=[new], flush_interval=60)
    _probe(100)
    assert instrument.flush(5.0) is True
    assert _probe_ids(old) == list(range(7))
    assert _probe_ids(new) == [100]
    assert old.closed is True


def test_exit_flushes_buffered_samples_in_a_real_process(tmp_path: Path) -> None:
    """A process that records and simply exits still has its samples in SQLite (atexit)."""
    db = tmp_path / "exit.db"
    script = textwrap.dedent(f"""
        import instrument
        instrument.configure(metrics_db={str(db)!r}, flush_interval=60)

        @instrument.timed(name="job")
        def job():
            return 1

        for _ in range(25):
            job()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(db) as conn:
        (count,) = conn.execute("SELECT count(*) FROM call_metrics WHERE name = 'job'").fetchone()
    assert count == 25


def test_thread_start_failure_falls_back_to_synchronous_flush(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """When threads cannot start, configure still works and flush delivers in the caller."""

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    memory = MemoryBackend()
    instrument.configure(backends=[memory], flush_interval=0.05)
    assert instrument.stats()["alive"] is False

    @instrument.timed(name="sync.job")
    def job() -> str:
        return "ok"

    assert [job() for _ in range(10)] == ["ok"] * 10
    assert instrument.flush() is True
    assert memory.get_sample_value("call", "sync.job") == 10

    failing = FailingBackend(failures=10**9)
    instrument.configure(backends=[failing])
    job()
    assert instrument.flush(0.2) is False
    assert "injected failure" in instrument.stats()["backends"][0]["last_error"]


def test_a_batch_is_what_was_buffered_when_it_began_even_as_samples_keep_coming() -> None:
    """Samples arriving while a batch is aggregated wait for the next one: a cycle always ends."""
    from instrument.core.buffer import Recorder

    t0 = time.perf_counter()
    arrivals = itertools.count()

    class Producing(Recorder):
        """Requests keep arriving, 3,000 for each chunk the flusher drains: an overload."""

        __slots__ = ("producing",)

        def drain_slots(self, count: int) -> Any:
            for _ in range(3000 if self.producing else 0):
                next(arrivals)
                self.add_flat(("http", t0, t0 + 0.02, 0.0, "/b", "POST", 201, 5, 1, None, False))
            return super().drain_slots(count)

    recorder = Producing(capacity=100_000)
    recorder.producing = True
    backend = MemoryBackend()
    flusher = _flusher.Flusher(recorder, [backend], interval=3600)
    for _ in range(5000):
        recorder.add_flat(("http", t0, t0 + 0.01, t0 + 0.005, "/a", "GET", 200, 0, 10, None, False))
    flusher._cycle()
    [batch] = backend.batches
    assert len(batch) == 5000
    assert {row[1] for row in batch.requests} == {"/a"}
    arrived = next(arrivals)
    assert arrived >= 3000 and recorder.buffered == arrived  # later arrivals wait, none lost
    recorder.producing = False
    flusher._cycle()
    assert len(backend.batches[1]) == arrived
    assert {row[1] for row in backend.batches[1].requests} == {"/b"}


def test_synchronous_flushes_from_many_threads_lose_nothing() -> None:
    """With no flusher thread, callers flushing at once take turns: every sample arrives once."""
    from instrument.core.buffer import Recorder

    recorder = Recorder(capacity=100_000)
    backend = MemoryBackend()
    flusher = _flusher.Flusher(recorder, [backend], interval=3600)  # never started
    t0 = time.perf_counter()
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(3000):
                recorder.add_flat(("http", t0, t0 + 0.001, 0.0, f"/w{k}", "GET", 200, 0, i, None,
                                   False))
                if i % 300 == 299:
                    flusher.flush()
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave between any two bytecodes
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(switch)
    assert flusher.flush() is True
    assert errors == []
    rows = [r for b in backend.batches for r in b.requests]
    assert len(rows) == 12_000
    assert {r[1] for r in rows} == {"/w0", "/w1", "/w2", "/w3"}
    assert sorted(r[6] for r in rows if r[1] == "/w2") == list(range(3000))


def test_every_batch_says_where_it_comes_from() -> None:
    """The flusher stamps each batch with its host label, name limit and its own counts."""
    failing = FailingBackend(failures=2)
    memory = MemoryBackend()
    instrument.configure(backends=[failing, memory], instance="web-7", max_routes=42,
                         flush_interval=60)
    _probe(1)
    assert not instrument.flush(0.3)  # the failing backend keeps its batch
    _probe(2)
    assert instrument.flush(5)
    origins = [b.origin for b in memory.batches]
    assert origins and all(o is not None for o in origins)
    assert {(o.host, o.max_names) for o in origins if o} == {("web-7", 42)}
    assert origins[-1] is not None and origins[-1].errors >= 1  # failures before it was queued
    runs = {o.run for o in origins if o}
    instrument.configure(backends=[memory], flush_interval=60)
    _probe(3)
    assert instrument.flush(5)
    last = memory.batches[-1].origin
    assert last is not None and last.run not in runs and last.errors == 0  # a new flusher
