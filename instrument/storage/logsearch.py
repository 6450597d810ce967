"""Search the ``logs`` table: full text (SQLite FTS5), level, logger, request id and time range.

Every value reaches SQLite as a bound parameter; only fixed SQL fragments are
joined. ``text`` is an FTS5 query (words, ``"a phrase"``, ``prefix*``,
``AND``/``OR``/``NOT``); one SQLite cannot parse raises :class:`LogQueryError`,
a ``ValueError`` a web handler can turn into a 400. Results come newest first
(by insertion order) and page with ``before_id``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from instrument.core.forkguard import sqlite_section
from instrument.storage.logquery import COLUMNS, LogQueryError, When, as_items, checked

__all__ = ["LogQueryError", "request_logs", "search_logs"]

Database = str | os.PathLike[str] | sqlite3.Connection

_SELECT = ", ".join("logs." + c for c in COLUMNS)
# Rowid windows walked newest-first before the indexes are asked (see _Query.newest).
_WINDOWS = (2_000, 8_000, 32_000)
# A filter with fewer lines than this in the whole table drives the search through its index.
_RARE = 5_000
# At or below INFO most lines match: walking the table newest-first and stopping at
# ``limit`` beats reading the level index and sorting the whole result.
_SCAN_LEVEL = logging.INFO


def _minute(iso: str) -> int:
    ts = datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp()
    return int(ts // 60) * 60


@contextmanager
def _connection(db: Database) -> Iterator[sqlite3.Connection]:
    with sqlite_section():  # no fork while this thread is inside SQLite (see _forkguard)
        if isinstance(db, sqlite3.Connection):
            yield db
            return
        path = os.fspath(db)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True, timeout=5.0,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            yield conn
        finally:
            conn.close()


def search_logs(db: Database, *, text: str | None = None, level: int | str | None = None,
                logger: str | None = None, request_id: str | None = None,
                since: When = None, until: When = None, limit: int = 100,
                before_id: int | None = None, newest_first: bool = True) -> list[dict[str, Any]]:
    """Log lines matching every filter given, as dicts with the ``logs`` columns.

    ``level`` is a minimum (``"WARNING"`` also returns errors). ``logger`` matches
    that logger and its children (``"app"`` matches ``"app.db"``, not ``"apple"``).
    ``since`` is inclusive and ``until`` exclusive; both take a datetime (naive
    means UTC), epoch seconds or ISO 8601 text. ``extra`` comes back parsed.
    ``db`` may also be a PostgreSQL store (URL or ``PgQueryConnection``): see
    ``storage/pg_logsearch.py``.
    """
    from instrument.storage import pg_logsearch as _pg_logsearch

    if _pg_logsearch.handles(db):
        return _pg_logsearch.search_logs(db, text=text, level=level, logger=logger,
                                         request_id=request_id, since=since, until=until,
                                         limit=limit, before_id=before_id,
                                         newest_first=newest_first)
    limit, n, since_iso, until_iso = checked(level, since, until, limit)
    text = text.strip() if text else None
    q = _Query(text)
    if n is not None:
        q.add("{p}logs.levelno >= ?", n, indexable=n > _SCAN_LEVEL)
    if logger:  # the logger itself, or a name in [logger + ".", logger + "/"): its children
        q.add("({p}logs.logger = ? OR ({p}logs.logger >= ? AND {p}logs.logger < ?))",
              logger, logger + ".", logger + "/")
    if since_iso is not None:
        q.add("{p}logs.timestamp >= ?", since_iso)
    if until_iso is not None:
        q.add("{p}logs.timestamp < ?", until_iso)
    with _connection(db) as conn:
        try:
            if request_id or not newest_first or (text and not q.params):
                if request_id:
                    q.add("{p}logs.request_id = ?", request_id)
                rows = q.direct(conn, limit, before_id, newest_first, bool(request_id))
            else:
                rows = q.newest(conn, limit, before_id, since_iso, until_iso)
        except sqlite3.OperationalError as exc:
            msg = str(exc)
            if text and (msg.startswith(("fts5:", "unknown special query", "no such column",
                                         "unterminated string"))):
                raise LogQueryError(
                    f"Cannot parse search text {text!r}: {msg}. Put words with punctuation "
                    'in double quotes, e.g. "user-42".') from None
            raise
    return as_items(rows, COLUMNS)


class _Query:
    """The filters as SQL, written so that we, not the planner, choose what drives the search.

    Lines arrive roughly in time order, so the newest matches are usually among
    the newest rows. :meth:`newest` starts at the newest row (or at the newest row
    of a time window, through ``logs_minutes``) and walks back in growing rowid
    windows with every index disabled (``+col``), stopping once ``limit`` lines
    matched; full-text matches come newest-first from FTS5 within the same range.
    A filter that matches few lines in the whole table (a rare level, an unknown
    logger: a bounded count through its index says so) drives the search through
    its index instead, and so do all the filters' indexes when matches turn out to
    be rare near the top. The result is always exactly the newest ``limit``
    matches by id.
    """

    def __init__(self, text: str | None) -> None:
        self.text = text
        self.conds: list[tuple[str, tuple[Any, ...], bool]] = []  # (sql, values, indexable)
        self.params: list[Any] = []

    def add(self, sql: str, *values: Any, indexable: bool = True) -> None:
        self.conds.append((sql, values, indexable))
        self.params.extend(values)

    def where(self, index: int | None = -1) -> list[str]:
        """Conditions with indexes allowed (-1: all that may use one; None: none; i: only i)."""
        return [sql.format(p="" if ok and (index == -1 or index == i) else "+")
                for i, (sql, _, ok) in enumerate(self.conds)]

    def _fts(self, where: list[str], params: list[Any], order: str,
             limit: int) -> tuple[str, list[Any]]:
        return (f"SELECT {_SELECT} FROM logs_fts JOIN logs ON logs.id = logs_fts.rowid"
                f" WHERE logs_fts MATCH ?{''.join(' AND ' + w for w in where)}"
                f" ORDER BY logs_fts.rowid {order} LIMIT ?", [self.text, *params, limit])

    def _by_index(self, where: list[str], params: list[Any], order: str,
                  limit: int) -> tuple[str, list[Any]]:
        if self.text:
            # Rows come from the index; FTS5 answers "rowid = ? AND MATCH" for each with a
            # seek. Left to itself the planner would walk every match of the text instead.
            return (f"SELECT {_SELECT} FROM logs CROSS JOIN logs_fts ON logs_fts.rowid = logs.id"
                    f" WHERE logs_fts MATCH ? AND {' AND '.join(where)}"
                    f" ORDER BY +logs.id {order} LIMIT ?", [self.text, *params, limit])
        # Ids from the index first, rows only for the ones kept. "+logs.id" keeps the
        # planner from satisfying ORDER BY with a walk of the whole table instead.
        return (f"SELECT {_SELECT} FROM logs WHERE logs.id IN (SELECT logs.id FROM logs"
                f" WHERE {' AND '.join(where)} ORDER BY +logs.id {order} LIMIT ?)"
                f" ORDER BY logs.id {order}", [*params, limit])

    def direct(self, conn: sqlite3.Connection, limit: int, before_id: int | None,
               newest_first: bool, by_request: bool) -> list[tuple[Any, ...]]:
        where, params = self.where(), list(self.params)
        fts_first = self.text and not by_request
        col = "logs_fts.rowid" if fts_first else "logs.id"
        if before_id is not None:
            where.append(f"{col} < ?" if newest_first else f"{col} > ?")
            params.append(int(before_id))
        order = "DESC" if newest_first else "ASC"
        if fts_first:
            sql, args = self._fts(where, params, order, limit)
        elif where:
            sql, args = self._by_index(where, params, order, limit)
        else:
            sql, args = f"SELECT {_SELECT} FROM logs ORDER BY logs.id {order} LIMIT ?", [limit]
        return conn.execute(sql, args).fetchall()

    def _rare(self, conn: sqlite3.Connection) -> int | None:
        """The first indexed filter (level, logger) with fewer than _RARE lines in the table."""
        for i, (sql, values, ok) in enumerate(self.conds):
            if ok and "timestamp" not in sql:
                n = conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM logs WHERE "
                                 f"{sql.format(p='')} LIMIT ?)", [*values, _RARE]).fetchone()[0]
                if n < _RARE:
                    return i
        return None

    def newest(self, conn: sqlite3.Connection, limit: int, before_id: int | None,
               since: str | None, until: str | None) -> list[tuple[Any, ...]]:
        hi = conn.execute("SELECT coalesce(max(id), 0) FROM logs").fetchone()[0]
        if before_id is not None:
            hi = min(hi, int(before_id) - 1)
        lo = 0
        if since is not None or until is not None:
            # Every line of the window was stored under an id in its minutes' ranges, so
            # the walk below starts at the window's newest row and stops at its oldest.
            try:
                a, b = conn.execute(
                    "SELECT min(first_id), max(last_id) FROM logs_minutes"
                    " WHERE minute >= ? AND minute <= ?",
                    (_minute(since) if since else 0, _minute(until) if until else 1 << 62),
                ).fetchone()
            except sqlite3.OperationalError:  # a read-only file from before the table existed
                a = b = 0
            if a is None:
                return []
            if b:
                lo, hi = max(lo, a - 1), min(hi, b)
        if hi <= lo:
            return []
        rare = self._rare(conn)
        if rare is not None:
            sql, args = self._by_index([*self.where(rare), "+logs.id > ?", "+logs.id <= ?"],
                                       [*self.params, lo, hi], "DESC", limit)
            return conn.execute(sql, args).fetchall()
        scan = self.where(None)
        if self.text:  # FTS5 yields matches newest-first within the rowid range
            sql, args = self._fts([*scan, "logs_fts.rowid > ?", "logs_fts.rowid <= ?"],
                                  [*self.params, lo, hi], "DESC", limit)
            return conn.execute(sql, args).fetchall()
        out: list[tuple[Any, ...]] = []
        for size in _WINDOWS:
            floor = max(lo, hi - size)
            sql = (f"SELECT {_SELECT} FROM logs WHERE "
                   + " AND ".join([*scan, "logs.id > ?", "logs.id <= ?"])
                   + " ORDER BY logs.id DESC LIMIT ?")
            out += conn.execute(sql, [*self.params, floor, hi, limit - len(out)]).fetchall()
            if len(out) >= limit or floor == lo:
                return out
            hi = floor
        # Matches are rare near the top: let the filters' indexes find the rest.
        sql, args = self._by_index([*self.where(), "+logs.id > ?", "+logs.id <= ?"],
                                   [*self.params, lo, hi], "DESC", limit - len(out))
        return out + conn.execute(sql, args).fetchall()


def request_logs(db: Database, request_id: str, *, limit: int = 1000) -> list[dict[str, Any]]:
    """Every line one request logged, oldest first (for a request's page)."""
    return search_logs(db, request_id=request_id, limit=limit, newest_first=False)
