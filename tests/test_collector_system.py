"""The system reader: exact fixed readings, one warning and nulls on trouble, the real machine."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from instrument.core.batch import SYSTEM_COLUMNS
from instrument.system.reader import SystemReader

MiB = 1024 * 1024
GiB = 1024 * MiB


class AccessDenied(Exception):
    """Stands in for psutil.AccessDenied: the reader learns the class from its source."""


class FakeProcess:
    def __init__(self, pid: int, owner: FakePsutil) -> None:
        self.pid = pid
        self.owner = owner

    def memory_info(self) -> Any:
        return SimpleNamespace(rss=50 * MiB)

    def cpu_percent(self, interval: float | None = None) -> float:
        return 7.5

    def num_threads(self) -> int:
        return 4

    def open_files(self) -> list[Any]:
        self.owner.calls["open_files"] += 1
        return self.owner.open_files()


class FakePsutil:
    """A psutil-like source with fixed readings; each method can be replaced per test."""

    AccessDenied = AccessDenied

    def __init__(self) -> None:
        self.calls = {"net_connections": 0, "open_files": 0, "disk_usage": 0}
        self.bytes_sent = 1000

    def cpu_percent(self, interval: float | None = None) -> float:
        return 12.5

    def virtual_memory(self) -> Any:
        return SimpleNamespace(percent=40.0, used=2 * GiB, available=3 * GiB)

    def disk_usage(self, path: str) -> Any:
        self.calls["disk_usage"] += 1
        return SimpleNamespace(percent=55.5, free=10 * GiB)

    def net_io_counters(self) -> Any:
        return SimpleNamespace(bytes_sent=self.bytes_sent, bytes_recv=2000)

    def net_connections(self, kind: str = "inet") -> list[Any]:
        self.calls["net_connections"] += 1
        return [SimpleNamespace(status="ESTABLISHED"), SimpleNamespace(status="LISTEN"),
                SimpleNamespace(status="TIME_WAIT")]

    def open_files(self) -> list[Any]:
        return [object(), object()]

    def Process(self, pid: int) -> FakeProcess:  # psutil's spelling
        return FakeProcess(pid, self)


KIT = {"buffered": 3, "dropped": 1, "last_flush_seconds": 0.012,
       "backends": [{"errors_total": 2}, {"errors_total": 3}]}


_readers: list[SystemReader] = []


def reader(source: Any, **options: Any) -> SystemReader:
    r = SystemReader(source, kit_stats=lambda: KIT, pid=4242, **options)
    _readers.append(r)
    return r


@pytest.fixture(autouse=True)
def _close_readers() -> Iterator[None]:
    """End the probe helper threads of every reader a test made."""
    yield
    while _readers:
        _readers.pop().close()


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="instrument"):
        yield caplog


def probe_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "system probe" in r.getMessage()]


def test_fixed_readings_give_exact_values() -> None:
    """Every column comes from the source, converted to the table's units."""
    row = reader(FakePsutil(), disk_path="/data").read()
    assert row == {
        "cpu_percent": 12.5, "memory_percent": 40.0, "memory_used_mb": 2048.0,
        "memory_available_mb": 3072.0, "disk_usage_percent": 55.5, "disk_free_gb": 10.0,
        "network_bytes_sent": 1000, "network_bytes_recv": 2000, "active_connections": 2,
        "process_rss_mb": 50.0, "process_cpu_percent": 7.5, "process_threads": 4,
        "process_open_files": 2, "kit_buffered": 3, "kit_dropped": 1, "kit_flush_ms": 12.0,
        "kit_backend_errors": 5, "pid": 4242,
    }
    assert tuple(row) == SYSTEM_COLUMNS


def test_connections_can_be_left_out() -> None:
    """connections=False never calls net_connections and reports null."""
    source = FakePsutil()
    row = reader(source, connections=False).read()
    assert row["active_connections"] is None
    assert source.calls["net_connections"] == 0
    assert row["cpu_percent"] == 12.5


def test_denied_probe_is_null_warned_once_and_not_retried(
        warnings: pytest.LogCaptureFixture) -> None:
    """A denied call (connections without privileges) gives null, one warning, no retries."""
    source = FakePsutil()

    def denied(kind: str = "inet") -> list[Any]:
        source.calls["net_connections"] += 1
        raise AccessDenied("psutil.AccessDenied (pid=1)")

    source.net_connections = denied  # type: ignore[method-assign]
    r = reader(source)
    rows = [r.read() for _ in range(3)]
    assert [row["active_connections"] for row in rows] == [None, None, None]
    assert all(row["cpu_percent"] == 12.5 for row in rows)
    assert source.calls["net_connections"] == 1
    assert len(probe_warnings(warnings)) == 1
    assert "connections" in probe_warnings(warnings)[0]
    assert r.unavailable == ["connections"]


def test_missing_network_interfaces_read_null() -> None:
    """net_io_counters() returning None (no interfaces in a container) gives nulls."""
    source = FakePsutil()
    source.net_io_counters = lambda: None  # type: ignore[method-assign]
    row = reader(source).read()
    assert row["network_bytes_sent"] is None and row["network_bytes_recv"] is None
    assert row["memory_percent"] == 40.0


def test_transient_failure_is_null_once_then_read_again(
        warnings: pytest.LogCaptureFixture) -> None:
    """An OSError is a null for that reading only; the probe is tried again next time."""
    source = FakePsutil()
    failures = iter([OSError("EIO"), None, OSError("EIO")])

    def flaky() -> Any:
        exc = next(failures)
        if exc is not None:
            raise exc
        return SimpleNamespace(bytes_sent=5, bytes_recv=6)

    source.net_io_counters = flaky  # type: ignore[method-assign]
    r = reader(source)
    assert [r.read()["network_bytes_sent"] for _ in range(3)] == [None, 5, None]
    assert len(probe_warnings(warnings)) == 1


def test_stuck_probe_costs_one_null_not_a_stall(warnings: pytest.LogCaptureFixture) -> None:
    """A disk call that hangs is abandoned at the deadline and skipped until it returns."""
    source = FakePsutil()
    release = threading.Event()
    original = source.disk_usage

    def hanging(path: str) -> Any:
        release.wait(10)
        return original(path)

    source.disk_usage = hanging  # type: ignore[method-assign]
    r = reader(source, probe_timeout=0.2)
    started = time.monotonic()
    first = r.read()
    second = r.read()  # the first call is still stuck: skipped without waiting
    elapsed = time.monotonic() - started
    assert first["disk_usage_percent"] is None and second["disk_usage_percent"] is None
    assert first["cpu_percent"] == 12.5
    assert elapsed < 1.5
    assert source.calls["disk_usage"] == 0  # the hanging call has not finished
    release.set()
    deadline = time.monotonic() + 5
    row = r.read()
    while row["disk_usage_percent"] is None and time.monotonic() < deadline:
        time.sleep(0.01)
        row = r.read()
    assert row["disk_usage_percent"] == 55.5
    assert len(probe_warnings(warnings)) == 1


def test_slow_probe_moves_off_the_collection_thread(warnings: pytest.LogCaptureFixture) -> None:
    """A normally fast call that turns out slow is given a deadline from then on."""
    source = FakePsutil()
    release = threading.Event()
    state = {"slow": 0.3}

    def memory() -> Any:
        if state["slow"]:
            time.sleep(state["slow"])
            state["slow"] = 0.0
        elif not release.is_set():
            release.wait(10)
        return SimpleNamespace(percent=40.0, used=GiB, available=GiB)

    source.virtual_memory = memory  # type: ignore[method-assign]
    r = reader(source, probe_timeout=0.1)
    assert r.read()["memory_percent"] == 40.0  # slow, but answered: kept
    assert "slow" in probe_warnings(warnings)[0]
    started = time.monotonic()
    assert r.read()["memory_percent"] is None  # now it hangs: deadline applies
    assert time.monotonic() - started < 1.0
    release.set()


def test_real_machine_readings_are_plausible() -> None:
    """psutil on this machine: percentages in 0..100, counters non-decreasing, sockets seen."""
    listeners = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        listeners.append(s)
    try:
        r = SystemReader(psutil, disk_path="/")
        _readers.append(r)
        first = r.read()
        time.sleep(0.05)
        second = r.read()
    finally:
        for s in listeners:
            s.close()
    for row in (first, second):
        for key in ("cpu_percent", "memory_percent", "disk_usage_percent"):
            assert 0.0 <= row[key] <= 100.0, key
        assert row["memory_used_mb"] > 0 and row["memory_available_mb"] > 0
        assert row["disk_free_gb"] > 0
        assert row["process_rss_mb"] > 1 and row["process_threads"] >= 1
        assert row["process_open_files"] >= 0
        assert row["active_connections"] >= 3
        assert row["kit_dropped"] >= 0
    assert second["network_bytes_sent"] >= first["network_bytes_sent"]
    assert second["network_bytes_recv"] >= first["network_bytes_recv"]
