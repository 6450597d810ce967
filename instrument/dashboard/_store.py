"""Pooled read-only connections to the metrics file, and the newest system reading.

The dashboard never writes the metrics file. When the file does not exist
yet, queries run against an empty in-memory database with the same schema, so
every endpoint answers with empty data instead of an error.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from instrument.core.forkguard import sqlite_section
from instrument.storage.sqlite import file_id
from instrument.storage.sqlite_schema import migrate

__all__ = ["Connections", "columns", "latest_system"]

class Connections:
    """A small pool of read-only connections (servers may run each request on a new thread)."""

    def __init__(self, path: str, timeout: float = 5.0, keep: int = 8) -> None:
        self.path = os.path.abspath(path)
        self.timeout = timeout
        self.keep = keep
        # (connection, (device, inode) of the file it reads, None for the empty stand-in)
        self._idle: list[tuple[sqlite3.Connection, tuple[int, int] | None]] = []
        self._lock = threading.Lock()

    def _open(self) -> tuple[sqlite3.Connection, bool]:
        if os.path.exists(self.path):
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=self.timeout,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000):d}")
            return conn, True
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        migrate(conn)
        return conn, False

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for one request, returned to the pool afterwards.

        The whole request runs in a fork-guard section (see ``_forkguard``): a fork waits
        for it, so no cursor of this thread is mid-read when the process forks.
        """
        with sqlite_section():
            with self._lock:
                entry = self._idle.pop() if self._idle else None
            current = file_id(self.path)
            if entry is not None and entry[1] != current:
                # The file appeared (stop answering from the empty stand-in), or was deleted or
                # replaced (a connection would go on reading the unlinked one): open it afresh.
                entry[0].close()
                entry = None
            conn, ident = entry if entry is not None else (self._open()[0], current)
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                with self._lock:
                    if len(self._idle) < self.keep:
                        self._idle.append((conn, ident))
                        conn = None  # type: ignore[assignment]
                if conn is not None:
                    conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        with sqlite_section():
            for conn, _ in idle:
                conn.close()


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def latest_system(conn: sqlite3.Connection) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM system_metrics ORDER BY timestamp DESC LIMIT 1")
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cur.description], row, strict=True))
