"""PostgreSQL storage for a fleet: SQLite's schema, rollups, tiers, totals and retention.

``INSTRUMENT_STORAGE=postgresql://user:password@host:5432/db`` makes every
process write here instead of the local SQLite file, so several machines feed
one database that :mod:`instrument.queries` and the Prometheus exposition read.
Each row carries the writer's ``host`` (``INSTRUMENT_INSTANCE``, default the
host name).

A batch is one transaction: raw rows go in with ``COPY``, rollups, tiers and
totals as one upsert per table over column arrays (``_pg_write.py``), sorted by
key so that writers sharing rows lock them in the same order and never
deadlock. When the server goes away the connection is dropped and the error
handed to the flusher, which keeps the batch (up to its bound of pending
batches) and retries it with backoff on a new connection: nothing buffered
within that bound is lost. Log lines are stored and searchable (a GIN full-text
index, ``_pg_logsearch.py``).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from instrument._errors import missing_extra
from instrument.core.batch import EXEMPLAR_WIDTH, SYSTEM_COLUMNS, Batch, iso_utc
from instrument.core.errors import OCCURRENCE_WIDTH
from instrument.storage.error_rows import GROUP_UPSERT, delete_errors_before
from instrument.storage.inflight import write_in_flight
from instrument.storage.pg_schema import migrate
from instrument.storage.pg_write import (
    BUCKETS,
    COARSE,
    COUNTERS_ADD,
    COUNTERS_MAX,
    ROLLUPS,
    TOTAL_BUCKETS,
    TOTALS,
    merge_histograms,
)
from instrument.storage.rows import (
    COARSE_PERIODS,
    app_rows,
    log_rows,
    profile_rows,
    scrub,
    system_rows,
    tier_rows,
)
from instrument.storage.totals import batch_rows, host_of

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("psycopg", "postgres") from exc

__all__ = ["PostgreSQLBackend", "connect"]

_RETENTION_EVERY = 600.0
_DELETE_CHUNK = 20_000

_API_COLUMNS = ("timestamp, endpoint, method, status_code, response_time_ms, request_size_bytes,"
                " response_size_bytes, error_count, ttfb_ms, exception, client_disconnected, pid,"
                " host")
_EXEMPLAR_COLUMNS = ("timestamp, minute, request_id, trace_id, method, route, path, query,"
                     " status_code, duration_ms, ttfb_ms, request_bytes, response_bytes, client,"
                     " user_agent, exception, reason, pid, host")
_OCCURRENCE_COLUMNS = ("timestamp, minute, group_id, request_id, trace_id, kind, route, method,"
                       " status_code, pid, host")
_UPSERT_GROUP = ("INSERT INTO error_groups (group_id, type, message, culprit, first_seen,"
                 " last_seen, count, traceback, host) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                 + GROUP_UPSERT.format(t="error_groups.", lo="LEAST", hi="GREATEST")
                 + ", host = excluded.host")
_CALL_COLUMNS = "timestamp, kind, name, method, status_code, duration_ms, exception, pid, host"
_SYSTEM_COLUMNS = f"timestamp, {', '.join(SYSTEM_COLUMNS)}, host"
_APP_COLUMNS = "timestamp, name, kind, value, pid, host"
_LOG_COLUMNS = ("timestamp, level, levelno, logger, message, exception, extra, request_id, route,"
                " method, pid, host")
def connect(url: str, *, timeout: float = 5.0, migrate_schema: bool = True) -> Any:
    """An autocommit psycopg connection (schema migrated unless told otherwise)."""
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout)),
                               application_name="instrument")
    except psycopg.OperationalError as exc:
        raise unreachable(url, exc) from None
    if migrate_schema:
        migrate(conn)
    return conn


class StoreUnreachable(psycopg.OperationalError):
    """The PostgreSQL store cannot be reached or refuses us: said as a configuration problem.

    Still a psycopg OperationalError, so whoever retried or answered 503 on a failed
    connect keeps doing so; only the words change.
    """


def unreachable(url: str, exc: BaseException) -> StoreUnreachable:
    """Why ``url`` cannot be used, naming the setting, with the password never shown.

    psycopg's own text says which it is (refused, authentication failed, no such
    database) and quotes only host, port, user and database; the URL is shown redacted
    and the password is cut from the text in case a server ever echoes it.
    """
    reason = " ".join(str(exc).split()).replace(url, _redacted(url))
    parts = urlsplit(url)
    for secret in {parts.password or "", unquote(parts.password or "")} - {""}:
        reason = reason.replace(secret, "***")
    return StoreUnreachable(f"PostgreSQL store INSTRUMENT_STORAGE={_redacted(url)} cannot be"
                            f" used: {reason[:300]}; check the host, port, user, password and"
                            " database in INSTRUMENT_STORAGE")


class PostgreSQLBackend:
    """Writes each batch in one transaction; reconnects on the next write after a failure."""

    name = "postgresql"
    stores_in_flight = True  # also sent batches carrying only the in-flight reading

    def __init__(self, url: str, *, retention_days: int = 7, timeout: float = 5.0,
                 instance: str | None = None) -> None:
        self.url = url
        self.retention_days = retention_days
        self.timeout = timeout
        self.instance = instance
        self._conn: Any = None
        self._pid = os.getpid()
        self._next_sweep = 0.0
        self._connected = False
        self.reconnects = 0  # new connections after a lost one, for health and tests

    def __repr__(self) -> str:
        return f"PostgreSQLBackend(url={_redacted(self.url)!r})"

    def _connection(self) -> Any:
        conn = self._conn
        if conn is None or self._pid != os.getpid() or conn.closed or conn.broken:
            if conn is not None and self._pid == os.getpid():
                _close_quietly(conn)
            if self._pid != os.getpid():
                self._pid, self._connected = os.getpid(), False
            self._conn = None
            self._conn = connect(self.url, timeout=self.timeout)
            if self._connected:
                self.reconnects += 1
            self._connected = True
        return self._conn

    def reset_after_fork(self) -> None:
        # The parent's socket is shared with the child: forget it here, never close it.
        self._conn = None
        self._pid = os.getpid()
        self._connected = False

    def host(self, batch: Batch) -> str:
        """The label ``batch``'s rows go under: ``instance=`` if given, else the batch's origin."""
        return self.instance or host_of(batch)

    def write(self, batch: Batch) -> None:
        conn = self._connection()
        try:
            try:
                self._write(conn, batch)
            except UnicodeEncodeError:  # lone surrogates: would fail on every retry
                scrub(batch)
                self._write(conn, batch)
        except psycopg.OperationalError:
            # Server restarted or network gone: reconnect on the flusher's retry.
            _close_quietly(conn)
            self._conn = None
            raise
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + _RETENTION_EVERY
            try:
                self.apply_retention()
            except Exception as exc:  # the batch is committed: raising would write it twice
                logging.getLogger("instrument").warning(
                    "instrument: retention sweep failed, next try in %ds: %s",
                    _RETENTION_EVERY, type(exc).__name__)

    def _write(self, conn: Any, batch: Batch) -> None:
        host = self.host(batch)
        rollups = batch.rollups
        with conn.transaction(), conn.cursor() as cur:
            _copy(cur, "api_metrics", _API_COLUMNS, batch.requests, host)
            _copy(cur, "call_metrics", _CALL_COLUMNS, batch.calls, host)
            _copy(cur, "request_exemplars", _EXEMPLAR_COLUMNS,
                  list(zip(*[iter(batch.exemplar_values)] * EXEMPLAR_WIDTH, strict=True)), host)
            _copy(cur, "error_occurrences", _OCCURRENCE_COLUMNS,
                  list(zip(*[iter(batch.error_values)] * OCCURRENCE_WIDTH, strict=True)), host)
            if batch.error_groups:  # in id order: concurrent writers lock rows alike
                cur.executemany(_UPSERT_GROUP, [(*g, host) for g in sorted(batch.error_groups)])
            if rollups:
                ROLLUPS.run(cur, [(*k, *v[:7], host) for k, v in rollups.items()])
                BUCKETS.run(cur, [(*k, b, c, host) for k, v in rollups.items()
                                  for b, c in v[7].items()])
                coarse, hists = tier_rows(rollups)
                COARSE.run(cur, [(*r, host) for r in coarse])
                merge_histograms(cur, [(*r, host) for r in hists])
            other = batch.other
            _copy(cur, "system_metrics", _SYSTEM_COLUMNS, system_rows(other.get("system", ())),
                  host)
            _copy(cur, "app_metrics", _APP_COLUMNS, app_rows(other.get("app", ())), host)
            _copy(cur, "profile_stacks", "minute, route, method, stack, samples, pid, host",
                  profile_rows(other.get("profile", ())), host)
            logs = other.get("log")
            if logs:  # in time order, as SQLite stores them: ids page newest-first by time
                _copy(cur, "logs", _LOG_COLUMNS, log_rows(sorted(logs, key=_created)), host)
            self._write_totals(cur, batch, host)

    def _write_totals(self, cur: Any, batch: Batch, host: str) -> None:
        series, buckets, sums, last = batch_rows(cur, batch, self, host, "%s")
        TOTALS.run(cur, series)
        TOTAL_BUCKETS.run(cur, buckets)
        COUNTERS_ADD.run(cur, sums)
        COUNTERS_MAX.run(cur, last)
        write_in_flight(cur, batch, host, "%s")

    def apply_retention(self, now: float | None = None) -> int:
        """Delete rows older than the retention period (totals are kept for ever)."""
        conn = self._connection()
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400
        cutoff_iso = iso_utc(cutoff)
        minute = int(cutoff // 60) * 60
        removed = 0
        for table in ("api_metrics", "call_metrics", "system_metrics", "app_metrics", "logs"):
            while True:
                n = conn.execute(
                    f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table}"
                    " WHERE timestamp < %s LIMIT %s)", (cutoff_iso, _DELETE_CHUNK)).rowcount
                removed += n
                if n < _DELETE_CHUNK:
                    break
        for table in ("metric_rollups", "metric_rollup_buckets", "request_exemplars",
                      "profile_stacks"):
            removed += conn.execute(f"DELETE FROM {table} WHERE minute < %s",
                                    (minute,)).rowcount
        removed += delete_errors_before(conn, cutoff_iso, minute, "%s")
        for period in (60, *COARSE_PERIODS):  # the period holding the cutoff is kept
            first = int(cutoff // period) * period
            for table in ("metric_rollups_coarse", "metric_histograms"):
                removed += conn.execute(f"DELETE FROM {table} WHERE period = %s AND start < %s",
                                        (period, first)).rowcount
        return removed

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            _close_quietly(conn)


def _copy(cur: Any, table: str, columns: str, rows: Sequence[tuple[Any, ...]], host: str) -> None:
    if not rows:
        return
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        write = copy.write_row
        for row in rows:
            write((*row, host))


def _created(sample: tuple[Any, ...]) -> float:
    return float(sample[1])


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        pass


def _redacted(url: str) -> str:
    """The URL without its password (after the user, or a ``password=`` parameter)."""
    scheme, sep, rest = url.partition("//")
    netloc, slash, path = rest.partition("/")
    creds, at, host = netloc.rpartition("@")  # the last @: a password may hold one
    if at and ":" in creds:
        netloc = f"{creds.split(':', 1)[0]}:***@{host}"
    path = _PASSWORD_PARAM.sub(r"\1***", path)
    return f"{scheme}{sep}{netloc}{slash}{path}"


_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&]*")
