"""Reads what a scrape exports from the store: cumulative totals and the latest system readings.

A read costs the same whatever the traffic or the number of workers ever
started: the totals tables hold one row per series (and bucket), and system
readings are taken from a short recent window through the timestamp index.
SQLite is opened read-only per read (a WAL reader never blocks the writers);
PostgreSQL keeps one connection per process, rebuilt after fork or an error.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from instrument.core.batch import iso_utc
from instrument.core.forkguard import sqlite_section
from instrument.storage.inflight import read_in_flight
from instrument.storage.totals import read_totals

__all__ = ["PostgreSQLSource", "SQLiteSource", "Snapshot", "Source", "source_for"]

#: system_metrics columns a scrape exports, in this order.
SYSTEM_FIELDS = ("cpu_percent", "memory_percent", "memory_used_mb", "memory_available_mb",
                 "disk_usage_percent", "disk_free_gb", "network_bytes_sent",
                 "network_bytes_recv", "active_connections", "process_rss_mb",
                 "process_cpu_percent", "process_threads", "process_open_files", "pid")
_SYSTEM_SQL = (f"SELECT {', '.join(SYSTEM_FIELDS)} FROM system_metrics WHERE timestamp >= {{p}}"
               "{host} ORDER BY timestamp, id")


@dataclass
class Snapshot:
    """Rows of the totals tables, plus the latest machine reading and one per live process.

    ``in_flight`` is the sum of the HTTP requests in flight that live processes stored at
    their last flush, over ``in_flight_processes`` processes (see :mod:`instrument.core.inflight`).
    """

    series: list[tuple[Any, ...]] = field(default_factory=list)
    buckets: list[tuple[Any, ...]] = field(default_factory=list)
    counters: list[tuple[Any, ...]] = field(default_factory=list)
    system: dict[str, Any] | None = None
    processes: dict[int, dict[str, Any]] = field(default_factory=dict)
    in_flight: int = 0
    in_flight_processes: int = 0


class Source:
    """Something a collector reads a :class:`Snapshot` from."""

    def read(self) -> Snapshot:  # pragma: no cover - interface
        raise NotImplementedError


def _plain(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    # PostgreSQL sums bigint into numeric: back to Python numbers.
    return [tuple(float(v) if isinstance(v, Decimal) else v for v in row) for row in rows]


def _system(rows: list[tuple[Any, ...]], snap: Snapshot) -> None:
    for row in rows:
        reading = dict(zip(SYSTEM_FIELDS, row, strict=True))
        if reading["cpu_percent"] is not None or reading["memory_percent"] is not None:
            snap.system = reading
        if reading["pid"] is not None:
            snap.processes[int(reading["pid"])] = reading


class SQLiteSource(Source):
    """Totals summed over every host in a SQLite file (one machine's workers)."""

    def __init__(self, path: str, *, system_window: float = 120.0, host: str | None = None
                 ) -> None:
        self.path = path
        self.system_window = system_window
        self.host = host

    def read(self) -> Snapshot:
        with sqlite_section():  # no fork while this thread is inside SQLite (see _forkguard)
            return self._read_file()

    def _read_file(self) -> Snapshot:
        snap = Snapshot()
        try:
            conn = sqlite3.connect(f"file:{os.path.abspath(self.path)}?mode=ro", uri=True,
                                   timeout=5.0, isolation_level=None)
        except sqlite3.OperationalError:  # no file yet: nothing recorded
            return snap
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("BEGIN")  # one snapshot: histogram counts and sums from the same commit
            snap.series, snap.buckets, snap.counters = read_totals(conn, self.host)
            since = iso_utc(time.time() - self.system_window)
            sql = _SYSTEM_SQL.format(p="?", host="")
            _system(conn.execute(sql, (since,)).fetchall(), snap)
            # last: a store older than migration 5 still exports everything else
            snap.in_flight, snap.in_flight_processes = read_in_flight(conn, self.host)
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):  # a store not migrated yet reads as empty
                raise
        finally:
            conn.close()
        return snap


class PostgreSQLSource(Source):
    """Totals of one host (``host=None``: the whole fleet) in a PostgreSQL store."""

    def __init__(self, url: str, *, host: str | None = None, system_window: float = 120.0
                 ) -> None:
        self.url = url
        self.host = host
        self.system_window = system_window
        self._conn: Any = None
        self._pid = 0
        self._lock = threading.Lock()

    def read(self) -> Snapshot:
        from instrument.storage.postgresql import connect

        with self._lock:
            conn = self._conn
            if conn is None or self._pid != os.getpid() or conn.closed or conn.broken:
                self._conn = conn = connect(self.url)
                self._pid = os.getpid()
            try:
                return self._read(conn)
            except Exception:
                self._conn = None
                try:
                    conn.close()
                except Exception:
                    pass
                raise

    def _read(self, conn: Any) -> Snapshot:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return self._read_snapshot(conn)

    def _read_snapshot(self, conn: Any) -> Snapshot:
        snap = Snapshot()
        series, buckets, counters = read_totals(conn, self.host, "%s")
        snap.series, snap.buckets, snap.counters = _plain(series), _plain(buckets), _plain(
            counters)
        snap.in_flight, snap.in_flight_processes = read_in_flight(conn, self.host, "%s")
        if self.host is None:  # machine and process gauges only make sense per host
            return snap
        since = iso_utc(time.time() - self.system_window)
        rows = conn.execute(_SYSTEM_SQL.format(p="%s", host=" AND host = %s"),
                            (since, self.host)).fetchall()
        _system(rows, snap)
        return snap

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            conn.close()


def source_for(settings: Any, *, all_hosts: bool = False) -> Source:
    """The store the kit's settings write to: PostgreSQL (this host's rows) or SQLite."""
    window = max(120.0, 3.0 * float(getattr(settings, "collection_interval", 30.0)))
    if getattr(settings, "storage", None):
        host = None if all_hosts else (settings.instance or socket.gethostname())
        return PostgreSQLSource(settings.storage, host=host, system_window=window)
    return SQLiteSource(settings.metrics_db, system_window=window)
