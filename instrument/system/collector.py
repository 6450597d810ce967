"""The seed's ``MetricsCollector``: system, process, kit and application metrics over time.

A daemon thread takes one reading every ``INSTRUMENT_COLLECTION_INTERVAL``
seconds (``METRICS_COLLECTION_INTERVAL``, default 30) from an injectable
psutil-like source (see :mod:`instrument.system.reader`), keeps the recent ones in
memory and hands each to the same buffer and flusher as requests, so they land
in ``system_metrics`` with the same retention. Application metrics are named
gauges (last value wins) and counters (summed), stored in ``app_metrics`` each
cycle; the seed's :class:`ApplicationMetrics` record is stored as gauges named
after its fields. Summaries are answered by :mod:`instrument.queries`.

There is one collector per process (:mod:`instrument.system.current`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from instrument.core.batch import SYSTEM_COLUMNS
from instrument.core.forkguard import sqlite_section
from instrument.core.runtime import ON, runtime
from instrument.storage import queries
from instrument.storage.error_query import list_groups
from instrument.system.reader import SystemMetrics, SystemReader

__all__ = ["ApplicationMetrics", "MetricsCollector", "SystemMetrics"]

log = logging.getLogger("instrument")


@dataclass
class ApplicationMetrics:
    """The seed's application snapshot; each field is stored as a gauge of that name."""

    timestamp: datetime
    active_fine_tuning_jobs: int = 0
    completed_evaluations: int = 0
    total_api_calls: int = 0
    cache_hit_rate: float = 0.0
    database_connections: int = 0
    queue_size: int = 0


_APP_FIELDS = tuple(f.name for f in dataclasses.fields(ApplicationMetrics) if f.name != "timestamp")


class MetricsCollector:
    """Collects readings on a thread, records app gauges/counters, answers summaries.

    ``source`` is a psutil-like object (default ``psutil``); ``interval``,
    ``disk_path`` and ``db_path`` default to the kit's settings and its SQLite
    backend. ``connections=False`` skips counting sockets, the one probe that
    can cost tens of milliseconds on a busy host.
    """

    def __init__(self, *, source: Any = None, interval: float | None = None,
                 disk_path: str | None = None, connections: bool = True, history: int = 2880,
                 probe_timeout: float = 1.0, db_path: str | None = None) -> None:
        self._options = {"source": source, "interval": interval, "disk_path": disk_path,
                         "connections": connections, "history": history,
                         "probe_timeout": probe_timeout, "db_path": db_path}
        self.system_metrics: deque[SystemMetrics] = deque(maxlen=history)
        self.app_metrics: deque[ApplicationMetrics] = deque(maxlen=history)
        self._reader: SystemReader | None = None
        self._lock = threading.Lock()  # counters
        self._life_lock = threading.Lock()  # start/stop
        self._store_lock = threading.Lock()  # the summary connection
        self._gauges: dict[str, float] = {}
        self._callbacks: dict[str, Callable[[], float]] = {}
        self._counters: dict[str, float] = {}
        self._stored_counters: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: tuple[str, sqlite3.Connection] | None = None
        self._warned: set[str] = set()
        self.cycles = 0
        self.last_cycle_seconds = 0.0

    # -- lifecycle -------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the collection thread is alive and not asked to stop."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    @property
    def interval(self) -> float:
        explicit = self._options["interval"]
        return float(explicit) if explicit else runtime.ensure_started().collection_interval

    def start_collection(self, *, _delay: float | None = None) -> bool:
        """Take a first reading now and start the thread; False when the kit is switched off.

        Calling it while collection runs changes nothing.
        """
        with self._life_lock:
            if self.running:
                return True
            runtime.ensure_started()
            if runtime.state != ON:
                log.info("instrument: disabled (INSTRUMENT_ENABLED=false); not collecting")
                return False
            if _delay is None:
                self._cycle()
                _delay = self.interval
            self._stop = threading.Event()
            thread = threading.Thread(target=self._run, args=(self._stop, _delay), daemon=True,
                                      name="instrument-collector")
            thread.start()
            self._thread = thread
            return True

    def stop_collection(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (a cycle in progress finishes first)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def _run(self, stop: threading.Event, delay: float) -> None:
        next_at = time.monotonic() + delay
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            self._cycle()
            next_at = max(next_at + self.interval, time.monotonic())

    def _cycle(self) -> None:
        try:
            self.collect_once()
        except Exception:  # a bug here must not end collection for good
            log.exception("instrument: metrics collection cycle failed")

    # -- readings --------------------------------------------------------------
    def _system_reader(self) -> SystemReader:
        if self._reader is None:
            disk = self._options["disk_path"] or runtime.ensure_started().disk_path
            self._reader = SystemReader(self._options["source"], disk_path=disk,
                                        connections=self._options["connections"],
                                        probe_timeout=self._options["probe_timeout"])
        return self._reader

    def collect_system_metrics(self) -> SystemMetrics:
        """Take one reading now, without keeping or storing it."""
        row = self._system_reader().read()
        return SystemMetrics(timestamp=datetime.now(timezone.utc), **row)

    def collect_once(self) -> SystemMetrics:
        """One cycle: read, keep in memory, record the reading and the application metrics."""
        started = time.perf_counter()
        reading = self.collect_system_metrics()
        self.system_metrics.append(reading)
        ts = reading.timestamp.timestamp()
        if runtime.state == ON:
            add = runtime.recorder.add
            add(("system", ts, {c: getattr(reading, c) for c in SYSTEM_COLUMNS}))
            for sample in self._app_samples(ts):
                add(sample)
        self.cycles += 1
        self.last_cycle_seconds = time.perf_counter() - started
        return reading

    def _app_samples(self, ts: float) -> list[tuple[Any, ...]]:
        pid = os.getpid()
        for name, fn in list(self._callbacks.items()):
            try:
                self._gauges[name] = float(fn())
            except Exception as exc:
                if name not in self._warned:
                    self._warned.add(name)
                    log.warning("instrument: gauge callback %r failed: %r", name, exc)
        with self._lock:
            gauges = list(self._gauges.items())
            deltas = [(n, v - self._stored_counters.get(n, 0.0))
                      for n, v in self._counters.items()]
            self._stored_counters = dict(self._counters)
        return ([("app", ts, n, "gauge", v, pid) for n, v in gauges]
                + [("app", ts, n, "counter", d, pid) for n, d in deltas if d])

    # -- application metrics -----------------------------------------------------
    def set_gauge(self, name: str, value: float) -> None:
        """Set a named gauge (queue size, cache hit rate...); stored every cycle."""
        self._gauges[name] = float(value)

    def gauge_callback(self, name: str, fn: Callable[[], float]) -> None:
        """Read a gauge from ``fn()`` at every cycle, e.g. ``lambda: work_queue.qsize()``."""
        self._callbacks[name] = fn

    def increment(self, name: str, amount: float = 1.0) -> None:
        """Add to a named counter; each cycle stores what was added since the last one."""
        with self._lock:
            self._counters[name] = self._counters.get(name, 0.0) + amount

    def store_app_metrics(self, app_metrics: ApplicationMetrics) -> None:
        """Record the seed's snapshot now: each field becomes the gauge of that name."""
        stamp = app_metrics.timestamp
        if stamp.tzinfo is None:  # the seed passes datetime.utcnow()
            stamp = stamp.replace(tzinfo=timezone.utc)
        ts, pid = stamp.timestamp(), os.getpid()
        self.app_metrics.append(app_metrics)
        runtime.ensure_started()
        live = runtime.state == ON
        for name in _APP_FIELDS:
            value = float(getattr(app_metrics, name))
            self._gauges[name] = value
            if live:
                runtime.recorder.add(("app", ts, name, "gauge", value, pid))

    _store_app_metrics = store_app_metrics

    def get_app_metrics(self) -> dict[str, float]:
        """This process's gauges (last value) and counters (total since start), by name."""
        with self._lock:
            return {**self._gauges, **self._counters}

    # -- answers -----------------------------------------------------------------
    def get_recent_system_metrics(self, minutes: float = 60) -> list[SystemMetrics]:
        """Readings this process took in the last ``minutes``, oldest first."""
        cutoff = datetime.now(timezone.utc) - timedelta(minutes=minutes)
        return [m for m in list(self.system_metrics) if m.timestamp >= cutoff]

    def _store(self) -> sqlite3.Connection | None:
        """The store summaries and alert rules read: the SQLite file, or with
        ``INSTRUMENT_STORAGE=postgresql://...`` the fleet's database (every host's rows)."""
        path = self._options["db_path"]
        if path is None:
            from instrument.storage.sqlite import SQLiteBackend

            settings = runtime.ensure_started()
            path = settings.storage or next(
                (b.path for b in runtime.backends if isinstance(b, SQLiteBackend)), None)
        if path is None:
            return None
        if self._conn is None or self._conn[0] != path or \
                not getattr(self._conn[1], "usable", True):  # a PostgreSQL server went away
            from instrument.storage.pg_read import PgQueryConnection, is_pg_url
            from instrument.storage.sqlite import connect

            if self._conn is not None and self._conn[0] == path:
                with contextlib.suppress(Exception):
                    self._conn[1].close()
            conn: Any = PgQueryConnection.open(path) if is_pg_url(path) else connect(path)
            self._conn = (path, conn)
        return self._conn[1]

    def get_metrics_summary(self, hours: float = 24) -> dict[str, Any]:
        """Request, latency, status, per-endpoint and system figures for the last ``hours``.

        Read from the store's rollups (see :func:`instrument.queries.summary`); empty
        sections when the kit has no SQLite backend.
        """
        with self._store_lock:
            conn = self._store()
            if conn is None:
                return {"period_hours": hours, "api": {}, "endpoints": [],
                        "slowest_endpoints": [], "most_failing_endpoints": [], "system": {}}
            return queries.summary(conn, hours)

    def get_current_metrics(self, window_minutes: float = 5) -> dict[str, Any]:
        """What alert rules read: ``{'system': {...}, 'api': {...}, 'app': {...}}``.

        ``system`` is the latest reading (taken now if none is recent), ``api`` the
        request figures of the last ``window_minutes`` from the store (empty without
        one), ``app`` this process's gauges and counters by name.
        """
        latest = self.system_metrics[-1] if self.system_metrics else None
        if latest is None or (datetime.now(timezone.utc) - latest.timestamp).total_seconds() \
                > 2 * self.interval:
            latest = self.collect_system_metrics()
        api: dict[str, Any] = {}
        cause: dict[str, Any] = {}
        with self._store_lock:
            conn = self._store()
            if conn is not None:
                now = time.time()
                stats = queries.api_stats(conn, now - window_minutes * 60.0, top=1)
                api = stats["api"]
                cause = _cause(conn, stats, now - window_minutes * 60.0, now)
        return {"timestamp": datetime.now(timezone.utc).isoformat(),
                "system": latest.to_dict(), "api": api, "app": self.get_app_metrics(),
                "cause": cause}

    def close(self) -> None:
        """Stop collecting, end the probe threads and close the summary connection."""
        self.stop_collection()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            with sqlite_section():
                conn[1].close()


def _cause(conn: Any, stats: dict[str, Any], since: float, until: float) -> dict[str, Any]:
    """The window's most failing and slowest route and its top error group, for alerts to
    point at (:mod:`instrument.alerting.cause`)."""
    def route(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        if not entries:
            return None
        e = entries[0]
        return {"route": e["endpoint"], "method": e["method"], "requests": e["request_count"],
                "errors": e["error_count"], "p95_ms": e.get("p95_response_time_ms")}

    out: dict[str, Any] = {"error_route": route(stats.get("most_failing_endpoints") or []),
                           "slow_route": route(stats.get("slowest_endpoints") or [])}
    try:
        groups = list_groups(conn, since, until, limit=1)[1]
    except sqlite3.OperationalError:  # a store from before error groups
        groups = []
    if groups:
        g = groups[0]
        out["error_group"] = {k: g.get(k) for k in ("group_id", "type", "message", "count")}
    return out

