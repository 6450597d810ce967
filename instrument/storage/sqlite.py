"""SQLite storage, the embedded default: one transaction per batch, WAL, safe across processes.

Several gunicorn workers can write the same file: each holds its own
connection (reopened after fork), writes under ``BEGIN IMMEDIATE`` with a
``busy_timeout``, and a lock that outlasts the timeout becomes a backend error
the flusher retries, never a failed request.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from instrument.core.batch import CALL_WIDTH, EXEMPLAR_WIDTH, REQUEST_WIDTH, Batch, iso_utc
from instrument.core.forkguard import sqlite_section
from instrument.storage.error_rows import delete_errors_before, write_errors
from instrument.storage.rows import profile_rows, scrub
from instrument.storage.sqlite_logs import delete_logs_before, write_logs
from instrument.storage.sqlite_metrics import (
    delete_metrics_before,
    insert_rows,
    insert_values,
    register,
    write_app,
    write_system,
    write_tiers,
)
from instrument.storage.sqlite_schema import migrate
from instrument.storage.sqlite_totals import write_totals

__all__ = ["SQLiteBackend", "connect", "file_id"]

_RETENTION_EVERY = 600.0  # seconds between retention sweeps
log = logging.getLogger("instrument")
_F = TypeVar("_F", bound=Callable[..., Any])

# Connections a child inherited: kept referenced forever, because closing them in the child
# would run SQLite's close path (WAL checkpoint, lock release) on the parent's behalf.
_inherited: list[sqlite3.Connection] = []


def _no_fork_inside(method: _F) -> _F:
    # os.fork() waits until no thread is inside a section (see _forkguard), so no write
    # transaction is open when a process forks. A child forked mid-transaction keeps the
    # parent's connection alive (the dead flusher thread's frame still references it)
    # together with SQLite's in-process lock bookkeeping for the file, and its own new
    # connection then finds the database locked forever.
    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        with sqlite_section():
            return method(*args, **kwargs)
    return guarded  # type: ignore[return-value]


_DELETE_CHUNK = 20_000

_INSERT_REQUEST = (
    "INSERT INTO api_metrics (timestamp, endpoint, method, status_code, response_time_ms,"
    " request_size_bytes, response_size_bytes, error_count, ttfb_ms, exception,"
    " client_disconnected, pid)"
)
_INSERT_EXEMPLAR = (
    "INSERT INTO request_exemplars (timestamp, minute, request_id, trace_id, method, route, path,"
    " query, status_code, duration_ms, ttfb_ms, request_bytes, response_bytes, client,"
    " user_agent, exception, reason, pid)"
)
_INSERT_PROFILE = "INSERT INTO profile_stacks (minute, route, method, stack, samples, pid)"
_INSERT_CALL = (
    "INSERT INTO call_metrics (timestamp, kind, name, method, status_code, duration_ms,"
    " exception, pid)"
)
_UPSERT_ROLLUP = (
    " ON CONFLICT(minute, kind, name, method, status_code) DO UPDATE SET"
    " count = count + excluded.count, errors = errors + excluded.errors,"
    " sum_ms = sum_ms + excluded.sum_ms, max_ms = max(max_ms, excluded.max_ms),"
    " sum_ttfb_ms = sum_ttfb_ms + excluded.sum_ttfb_ms,"
    " request_bytes = request_bytes + excluded.request_bytes,"
    " response_bytes = response_bytes + excluded.response_bytes"
)
_UPSERT_BUCKET = (
    " ON CONFLICT(minute, kind, name, method, status_code, bucket) DO UPDATE SET"
    " count = count + excluded.count"
)

# sqlite3 binds int, float and str directly but sends every other value, None and bytes
# included, through its adapter lookup, whose miss costs ~2,500 instructions (a formatted
# and discarded AttributeError): 15 % of an api_metrics insert. A registered adapter is a
# dict hit. These are C callables that return their argument (None for None, the same
# bytes object for bytes), so what is bound is unchanged, for the kit's statements and
# any other sqlite3 user in the process alike.
_SAME: tuple[tuple[type, Any], ...] = ((type(None), {}.get), (bytes, bytes))
for _type, _same in _SAME:
    if (_type, sqlite3.PrepareProtocol) not in sqlite3.adapters:
        sqlite3.register_adapter(_type, _same)


class StoreOpenError(OSError):
    """A database file that cannot be opened: a configuration problem, said as one."""


def unopenable(path: str, exc: BaseException, setting: str) -> StoreOpenError:
    """The error for a store ``path`` that cannot be created or opened, naming its setting.

    A string, not an import of the config: storage sits below it (the architecture rule).
    The setting comes first so that a message cut short in health still names it.
    """
    full, text = os.path.abspath(path), str(exc)
    nearest = full if os.path.exists(full) else os.path.dirname(full)
    if os.path.isdir(full):
        why = "it is a directory"
    elif isinstance(exc, (FileExistsError, NotADirectoryError)):
        why = "a part of its directory is a file"
    elif isinstance(exc, PermissionError) or "readonly" in text or (
            "unable to open" in text and not os.access(nearest, os.W_OK)):
        why = "permission denied"
    elif "not a database" in text:
        why = "the file is not an SQLite database"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return StoreOpenError(f"{setting} file {full} cannot be opened ({why}); set {setting}"
                          " to a file this process can create and write")


def file_trouble(exc: BaseException) -> bool:
    """Whether ``exc`` is about the database file itself (where it is, what it is, who may
    write it), which the user fixes by pointing the setting elsewhere; not "locked"."""
    if isinstance(exc, sqlite3.Error):
        text = str(exc)
        return any(m in text for m in ("unable to open", "readonly", "not a database"))
    return isinstance(exc, OSError)


@_no_fork_inside
def connect(path: str, *, timeout: float = 5.0, readonly: bool = False) -> sqlite3.Connection:
    """Open (and migrate) a metrics database with the pragmas every writer uses.

    A file that cannot be created, opened or written raises :class:`StoreOpenError`
    naming INSTRUMENT_METRICS_DB; a busy one raises sqlite3's own error, retried.
    """
    try:
        return _connect(path, timeout, readonly)
    except (OSError, sqlite3.Error) as exc:
        if not file_trouble(exc):
            raise
        raise unopenable(path, exc, "INSTRUMENT_METRICS_DB") from None


def _connect(path: str, timeout: float, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{os.path.abspath(path)}?mode=ro" if readonly else None
    if not readonly:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    conn = sqlite3.connect(uri or path, timeout=timeout, isolation_level=None,
                           check_same_thread=False, uri=readonly)
    try:
        _prepare(conn, timeout, readonly)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, timeout: float, readonly: bool) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000):d}")
    if not readonly:
        # A new file gets 8 KiB pages (an existing one keeps its own): a route's tier
        # histograms (~2 KB) then fit in their b-tree cell instead of an overflow page
        # rewritten on every flush, a fifth of what a 1-second flush costs.
        conn.execute("PRAGMA page_size = 8192")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Writers append near the end of each table: 512 KiB of page cache (64 pages) holds
        # every table's and index's right edge and writes as fast as the default 2 MiB
        # (benchmarks/flusher.py); the rest would be resident memory the app keeps.
        conn.execute("PRAGMA cache_size = -512")
        # Every flush rewrites the same hot pages (this minute's rollups, the open tiers):
        # checkpointing every 16 MiB of WAL rather than every 1,000 pages copies them
        # into the database a quarter as often (4 KiB pages), ~8 % of a small batch's cost.
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA wal_autocheckpoint = {(16 << 20) // page:d}")
        register(conn)
        migrate(conn)
        # A statement of many rows keeps a statement journal (to undo just itself on an
        # error) that spilled into a /var/tmp file past 64 KiB, written and read back on
        # every batch. It is at most the pages one statement touches: keep it in memory.
        # (Set after the migrations, whose GROUP BY over a large old file may need more.)
        conn.execute("PRAGMA temp_store = MEMORY")


def file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``, or None when there is none (one stat call)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class SQLiteBackend:
    """Writes raw rows, per-minute rollups and histogram buckets for each batch."""

    name = "sqlite"
    stores_in_flight = True  # also sent batches carrying only the in-flight reading

    def __init__(self, path: str = "./instrument-data/metrics.db", *, retention_days: int = 7,
                 timeout: float = 5.0) -> None:
        self.path = path
        self.retention_days = retention_days
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) of the open file
        self._pid = os.getpid()
        self._next_sweep = 0.0

    def __repr__(self) -> str:
        return f"SQLiteBackend(path={self.path!r}, retention_days={self.retention_days})"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            # A connection inherited through fork must not be used (or closed) by the child.
            if self._conn is not None:
                _inherited.append(self._conn)
            self._pid = os.getpid()
            self._conn = connect(self.path, timeout=self.timeout)
            self._file = file_id(self.path)
        elif self._file is not None and file_id(self.path) != self._file:
            # Deleted or replaced under us: SQLite would go on writing into the unlinked
            # inode and every row would vanish. Start a new file and fail this attempt, so
            # the flusher keeps the batch for the new file and health shows what happened.
            # (Closing the old connection is safe: SQLite sees the file moved and neither
            # checkpoints nor deletes the "-wal" name, which may be the new file's.)
            old, self._conn = self._conn, None
            try:
                old.close()
            except sqlite3.Error:
                pass
            self._conn = connect(self.path, timeout=self.timeout)
            self._file = file_id(self.path)
            raise sqlite3.OperationalError(
                f"the database file {self.path} was deleted or replaced; a new one was created")
        return self._conn

    def reset_after_fork(self) -> None:
        if self._conn is not None:
            _inherited.append(self._conn)
        self._conn = None
        self._pid = os.getpid()

    @_no_fork_inside
    def write(self, batch: Batch) -> None:
        conn = self._connection()
        try:
            self._write(conn, batch)
        except UnicodeEncodeError:
            # Text SQLite cannot store (lone surrogates: undecodable bytes in a path, a header
            # or a log message) would fail this batch on every retry and hold back all that
            # comes after it. Store it with those characters escaped instead.
            scrub(batch)
            self._write(conn, batch)
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + _RETENTION_EVERY
            try:
                self.apply_retention()
            except Exception as exc:  # the batch is committed: raising would write it twice
                log.warning("instrument: retention sweep of %s failed, next try in %ds: %s",
                            self.path, _RETENTION_EVERY, exc)

    def _write(self, conn: sqlite3.Connection, batch: Batch) -> None:
        rollups = batch.rollups
        conn.execute("BEGIN IMMEDIATE")
        try:
            insert_values(conn, _INSERT_REQUEST, REQUEST_WIDTH, batch.request_values)
            insert_values(conn, _INSERT_CALL, CALL_WIDTH, batch.call_values)
            insert_values(conn, _INSERT_EXEMPLAR, EXEMPLAR_WIDTH, batch.exemplar_values)
            if batch.error_values or batch.error_groups:
                write_errors(conn, batch.error_values, batch.error_groups)
            if rollups:
                insert_rows(conn, "INSERT INTO metric_rollups", 12,
                            [(*k, *v[:7]) for k, v in rollups.items()], _UPSERT_ROLLUP)
                insert_rows(conn, "INSERT INTO metric_rollup_buckets", 7,
                            [(*k, b, c) for k, v in rollups.items() for b, c in v[7].items()],
                            _UPSERT_BUCKET)
                write_tiers(conn, rollups)
            system = batch.other.get("system")
            if system:
                write_system(conn, system)
            app = batch.other.get("app")
            if app:
                write_app(conn, app)
            logs = batch.other.get("log")
            if logs:
                write_logs(conn, logs)
            stacks = batch.other.get("profile")
            if stacks:
                insert_rows(conn, _INSERT_PROFILE, 6, profile_rows(stacks))
            write_totals(conn, batch, self)
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    @_no_fork_inside
    def apply_retention(self, now: float | None = None) -> int:
        """Delete rows older than the retention period, in chunks to keep locks short."""
        conn = self._connection()
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400
        cutoff_iso = iso_utc(cutoff)
        removed = 0
        for table in ("api_metrics", "call_metrics", "system_metrics"):
            while True:
                cur = conn.execute(
                    f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table}"
                    " WHERE timestamp < ? LIMIT ?)", (cutoff_iso, _DELETE_CHUNK))
                removed += cur.rowcount
                if cur.rowcount < _DELETE_CHUNK:
                    break
        removed += delete_logs_before(conn, cutoff_iso, _DELETE_CHUNK)
        removed += delete_metrics_before(conn, cutoff, _DELETE_CHUNK)
        minute = int(cutoff // 60) * 60
        for table in ("metric_rollups", "metric_rollup_buckets", "request_exemplars",
                      "profile_stacks"):
            removed += conn.execute(f"DELETE FROM {table} WHERE minute < ?",
                                    (minute,)).rowcount
        removed += delete_errors_before(conn, cutoff_iso, minute)
        return removed

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            with sqlite_section():
                conn.close()
