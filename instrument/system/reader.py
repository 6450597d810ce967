"""One reading of the machine, this process and the kit itself, from a psutil-like source.

The source is injected (``psutil`` by default), the way prometheus_client's
``ProcessCollector`` takes ``proc=``, so tests feed fixed readings. Every
probe is allowed to fail: a call that is denied (``net_connections`` without
privileges, ``/proc`` hidden in a container) or missing gives ``None`` for its
columns and one logged warning, then is not tried again. Active connections
are sockets in use, TIME_WAIT excluded: from the kernel's tally in
``/proc/net/sockstat`` with the real psutil on Linux, else from
``net_connections('inet')``. Probes that can block
(connections, disk on a network mount, open files) run on a helper thread with
a deadline, so a stuck call costs one null reading, never a stalled loop; a
probe that turns out slow anywhere is moved to a helper thread too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from instrument.core.batch import SYSTEM_COLUMNS

__all__ = ["SystemMetrics", "SystemReader"]

log = logging.getLogger("instrument")


_MB = 1024.0 * 1024.0
_GB = _MB * 1024.0


@dataclass
class SystemMetrics:
    """One reading; ``None`` where this machine would not tell (see the log warning)."""

    timestamp: datetime
    cpu_percent: float | None = None
    memory_percent: float | None = None
    memory_used_mb: float | None = None
    memory_available_mb: float | None = None
    disk_usage_percent: float | None = None
    disk_free_gb: float | None = None
    network_bytes_sent: int | None = None
    network_bytes_recv: int | None = None
    active_connections: int | None = None
    process_rss_mb: float | None = None
    process_cpu_percent: float | None = None
    process_threads: int | None = None
    process_open_files: int | None = None
    kit_buffered: int | None = None
    kit_dropped: int | None = None
    kit_flush_ms: float | None = None
    kit_backend_errors: int | None = None
    pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["timestamp"] = self.timestamp.isoformat()
        return out



def _EXIT() -> None:  # the sentinel that ends a helper thread
    return None


class _Stuck(Exception):
    """The helper thread is still inside the previous call."""


class _Helper:
    """A daemon thread that runs one probe at a time so the caller can stop waiting."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.busy = False
        self._requests: queue.SimpleQueue[tuple[Callable[[], Any], list[Any],
                                                threading.Event]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        if self.busy:
            raise _Stuck
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"instrument-probe-{self.name}")
            self._thread.start()
        box: list[Any] = []
        done = threading.Event()
        self.busy = True
        self._requests.put((fn, box, done))
        if not done.wait(timeout):
            raise TimeoutError(f"no answer within {timeout:g}s")
        if box[0]:
            raise box[1]
        return box[1]

    def close(self) -> None:
        """Let the thread end once it is idle (a stuck call still finishes first)."""
        if self._thread is not None:
            self._requests.put((_EXIT, [], threading.Event()))

    def _run(self) -> None:
        while True:
            fn, box, done = self._requests.get()
            if fn is _EXIT:
                return
            try:
                box[:] = [False, fn()]
            except Exception as exc:
                box[:] = [True, exc]
            self.busy = False
            done.set()


class _Probe:
    """One guarded reading: tried, timed, and switched off or moved after trouble."""

    def __init__(self, name: str, fn: Callable[[], dict[str, Any]], columns: tuple[str, ...],
                 *, guarded: bool) -> None:
        self.name = name
        self.fn = fn
        self.columns = columns
        self.helper: _Helper | None = _Helper(name) if guarded else None
        self.disabled = False
        self.warned = False


class SystemReader:
    """Reads one row of :data:`SYSTEM_COLUMNS`; unreadable values are ``None``."""

    def __init__(self, source: Any = None, *, disk_path: str = "/", connections: bool = True,
                 probe_timeout: float = 1.0, pid: int | None = None,
                 kit_stats: Callable[[], Mapping[str, Any]] | None = None) -> None:
        if source is None:
            import psutil

            source = psutil
        self.source = source
        self.disk_path = disk_path
        self.probe_timeout = probe_timeout
        self.pid = os.getpid() if pid is None else pid
        self._kit_stats = kit_stats
        denied: list[type[BaseException]] = [PermissionError, NotImplementedError]
        access_denied = getattr(source, "AccessDenied", None)
        if isinstance(access_denied, type) and issubclass(access_denied, BaseException):
            denied.append(access_denied)
        self._denied = tuple(denied)
        self._process: Any = None
        self._probes = [
            _Probe("cpu", self._cpu, ("cpu_percent",), guarded=False),
            _Probe("memory", self._memory,
                   ("memory_percent", "memory_used_mb", "memory_available_mb"), guarded=False),
            _Probe("disk", self._disk, ("disk_usage_percent", "disk_free_gb"), guarded=True),
            _Probe("network", self._network, ("network_bytes_sent", "network_bytes_recv"),
                   guarded=False),
            _Probe("process", self._proc,
                   ("process_rss_mb", "process_cpu_percent", "process_threads"), guarded=False),
            _Probe("open files", self._open_files, ("process_open_files",), guarded=True),
            _Probe("kit health", self._kit,
                   ("kit_buffered", "kit_dropped", "kit_flush_ms", "kit_backend_errors"),
                   guarded=False),
        ]
        # Counting sockets through psutil walks every process's fds (tens of ms with a
        # thousand sockets); the kernel's own tally in /proc/net/sockstat is O(1).
        self._sockstat = (getattr(source, "__name__", None) == "psutil"
                          and os.path.exists("/proc/net/sockstat"))
        if connections:
            self._probes.insert(4, _Probe("connections", self._connections,
                                          ("active_connections",),
                                          guarded=not self._sockstat))
        self._prime()

    # -- probes: each returns a dict of its columns ---------------------------
    def _cpu(self) -> dict[str, Any]:
        return {"cpu_percent": float(self.source.cpu_percent(interval=None))}

    def _memory(self) -> dict[str, Any]:
        vm = self.source.virtual_memory()
        return {"memory_percent": float(vm.percent), "memory_used_mb": vm.used / _MB,
                "memory_available_mb": vm.available / _MB}

    def _disk(self) -> dict[str, Any]:
        du = self.source.disk_usage(self.disk_path)
        return {"disk_usage_percent": float(du.percent), "disk_free_gb": du.free / _GB}

    def _network(self) -> dict[str, Any]:
        nio = self.source.net_io_counters()
        if nio is None:  # no network interfaces (some containers)
            raise NotImplementedError("no network interfaces")
        return {"network_bytes_sent": int(nio.bytes_sent),
                "network_bytes_recv": int(nio.bytes_recv)}

    def _connections(self) -> dict[str, Any]:
        # Sockets in use (TCP and UDP, IPv4 and IPv6), not counting TIME_WAIT leftovers.
        if self._sockstat:
            return {"active_connections": _sockstat_inuse()}
        conns = self.source.net_connections(kind="inet")
        return {"active_connections": sum(1 for c in conns
                                          if getattr(c, "status", "") != "TIME_WAIT")}

    def _proc_handle(self) -> Any:
        if self._process is None:
            self._process = self.source.Process(self.pid)
        return self._process

    def _proc(self) -> dict[str, Any]:
        proc = self._proc_handle()
        oneshot = getattr(proc, "oneshot", None)
        with oneshot() if oneshot is not None else contextlib.nullcontext():
            return {"process_rss_mb": proc.memory_info().rss / _MB,
                    "process_cpu_percent": float(proc.cpu_percent(interval=None)),
                    "process_threads": int(proc.num_threads())}

    def _open_files(self) -> dict[str, Any]:
        return {"process_open_files": len(self._proc_handle().open_files())}

    def _kit(self) -> dict[str, Any]:
        stats = self._kit_stats() if self._kit_stats is not None else _runtime_stats()
        return {
            "kit_buffered": int(stats.get("buffered", 0)),
            "kit_dropped": int(stats.get("dropped", 0)),
            "kit_flush_ms": float(stats.get("last_flush_seconds", 0.0)) * 1000.0,
            "kit_backend_errors": sum(int(b.get("errors_total", 0))
                                      for b in stats.get("backends", ())),
        }

    def _prime(self) -> None:
        # cpu_percent(interval=None) compares with the previous call: the first one is 0.0.
        with contextlib.suppress(Exception):
            self.source.cpu_percent(interval=None)
        with contextlib.suppress(Exception):
            self._proc_handle().cpu_percent(interval=None)

    # -- reading ---------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        """Every column of one reading; never raises, never waits past the probe timeout."""
        row: dict[str, Any] = dict.fromkeys(SYSTEM_COLUMNS)
        row["pid"] = self.pid
        for probe in self._probes:
            if not probe.disabled:
                row.update(self._run(probe))
        return row

    def _run(self, probe: _Probe) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            if probe.helper is not None:
                values = probe.helper.call(probe.fn, self.probe_timeout)
            else:
                values = probe.fn()
        except _Stuck:
            return {}
        except TimeoutError as exc:
            self._warn(probe, f"too slow ({exc}); null until it answers")
            return {}
        except self._denied as exc:
            probe.disabled = True
            self._warn(probe, f"not permitted here ({type(exc).__name__}: {exc}); always null")
            return {}
        except Exception as exc:
            self._warn(probe, f"failed ({type(exc).__name__}: {exc}); null this time")
            return {}
        if probe.helper is None and time.perf_counter() - started > self.probe_timeout:
            probe.helper = _Helper(probe.name)  # slow here: keep it off the loop from now on
            self._warn(probe, "slow; moved to a helper thread with a deadline")
        return values

    def _warn(self, probe: _Probe, what: str) -> None:
        if not probe.warned:
            probe.warned = True
            log.warning("instrument: system probe %r (%s) %s", probe.name,
                        ", ".join(probe.columns), what)

    def close(self) -> None:
        """End the helper threads of the guarded probes."""
        for probe in self._probes:
            if probe.helper is not None:
                probe.helper.close()

    @property
    def unavailable(self) -> list[str]:
        """Probes switched off because this machine does not allow them."""
        return [p.name for p in self._probes if p.disabled]


def _sockstat_inuse() -> int:
    total = 0
    for path in ("/proc/net/sockstat", "/proc/net/sockstat6"):
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:  # no IPv6
            continue
        for line in text.splitlines():
            proto, _, rest = line.partition(":")
            if proto in ("TCP", "UDP", "TCP6", "UDP6"):
                fields = rest.split()
                total += int(fields[fields.index("inuse") + 1])
    return total


def _runtime_stats() -> Mapping[str, Any]:
    from instrument.core.runtime import runtime

    return runtime.stats()
