"""The dashboard over a PostgreSQL store: a connection pool and the few dialect questions.

With ``INSTRUMENT_STORAGE=postgresql://...`` the dashboard reads the fleet's
database through :class:`~instrument.storage.pg_read.PgQueryConnection`,
which rewrites the read side's SQLite dialect, so every endpoint runs the same
code as over a file. What the file answers with ``PRAGMA`` or ``sqlite_master``
(columns of a table, whether it exists) is asked of ``information_schema``
here. The pool migrates the schema when it opens its first connection, as a
writer would, so a dashboard started before any app answers with empty data;
a role without the right to create tables just reads.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from instrument.storage.pg_read import PgQueryConnection, is_pg_url

__all__ = ["PgConnections", "columns", "has_table", "is_pg", "open_connections", "unavailable"]

log = logging.getLogger("instrument")


def is_pg(conn: object) -> bool:
    """Whether a read connection is PostgreSQL's (else it is a ``sqlite3.Connection``)."""
    return isinstance(conn, PgQueryConnection)


def open_connections(target: str, timeout: float = 5.0) -> Any:
    """A pool for ``target``: a SQLite file path or a ``postgresql://`` URL."""
    if is_pg_url(target):
        return PgConnections(target, timeout)
    from instrument.dashboard._store import Connections

    return Connections(target, timeout)


def columns(conn: Any, table: str) -> set[str]:
    """The column names of ``table`` in either store."""
    if is_pg(conn):
        rows = conn.execute("SELECT column_name FROM information_schema.columns"
                            " WHERE table_name = ? AND table_schema = current_schema()",
                            (table,)).fetchall()
        return {r[0] for r in rows}
    from instrument.dashboard._store import columns as sqlite_columns

    return sqlite_columns(conn, table)


def has_table(conn: Any, table: str) -> bool:
    if is_pg(conn):
        return conn.execute("SELECT to_regclass(?) IS NOT NULL", (table,)).fetchone()[0]
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone() \
        is not None


class PgConnections:
    """The PostgreSQL counterpart of ``_store.Connections``: a few pooled read connections.

    ``path`` is the URL without its password (it shows in reprs and logs). A
    connection the server dropped is not pooled again, and one a forked child
    inherited is forgotten, never closed: closing it would end the parent's session.
    """

    def __init__(self, url: str, timeout: float = 5.0, keep: int = 8) -> None:
        from instrument.storage.postgresql import _redacted

        self.path = _redacted(url)
        self._url = url
        self.timeout = timeout
        self.keep = keep
        self._idle: list[PgQueryConnection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._migrated = False

    def _open(self) -> PgQueryConnection:
        from instrument.storage.pg_schema import migrate

        conn = PgQueryConnection.open(self._url, self.timeout)
        if not self._migrated:
            try:
                migrate(conn.conn)
            except Exception as exc:  # e.g. a read-only role: the writers migrate
                log.info("instrument dashboard: not migrating the PostgreSQL schema (%s)",
                         type(exc).__name__)
                conn.close()
                conn = PgQueryConnection.open(self._url, self.timeout)
            self._migrated = True
        return conn

    @contextmanager
    def connection(self) -> Iterator[PgQueryConnection]:
        """A connection for one request, returned to the pool afterwards if still usable."""
        with self._lock:
            if self._pid != os.getpid():
                self._idle, self._pid = [], os.getpid()
            conn = self._idle.pop() if self._idle else None
        if conn is not None and not conn.usable:
            conn = None
        if conn is None:
            conn = self._open()
        try:
            yield conn
        finally:
            keep = conn.usable
            if keep and conn.in_transaction:
                try:
                    conn.conn.execute("ROLLBACK")
                except Exception:
                    keep = False
            with self._lock:
                pooled = keep and len(self._idle) < self.keep and self._pid == os.getpid()
                if pooled:
                    self._idle.append(conn)
            if not pooled:
                _close(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            ours = self._pid == os.getpid()
        if ours:
            for conn in idle:
                _close(conn)


def _close(conn: PgQueryConnection) -> None:
    try:
        conn.close()
    except Exception:
        pass


def unavailable(exc: BaseException) -> str | None:
    """The 503 message for a PostgreSQL error that is the store's state, not a bug; else None."""
    if type(exc).__name__ == "StoreUnreachable":  # the store's own wrapper of a failed connect
        return "The PostgreSQL store is unreachable; try again."
    if not type(exc).__module__.startswith("psycopg"):
        return None
    import psycopg

    if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)):
        return ("The PostgreSQL schema is from an older version of the kit; start an"
                " instrumented app once with this version to upgrade it.")
    if isinstance(exc, psycopg.OperationalError):
        return "The PostgreSQL store is unreachable; try again."
    return None
