"""Lets :mod:`instrument.queries` read a PostgreSQL store with its SQLite-dialect SQL.

The read side is written once, for SQLite. This connection wrapper rewrites the
few SQLite-only spellings it uses, once per distinct statement (cached):

- ``?`` placeholders become ``%s``;
- ``+column`` (SQLite's way to keep an index out of a condition) loses the ``+``;
- ``SELECT name, value, max(timestamp) ... GROUP BY name`` (SQLite takes the bare
  columns from the row holding the maximum) becomes ``DISTINCT ON (name)``;
- ``CAST(strftime('%s', column) AS INTEGER)`` (whole epoch seconds of an ISO text
  timestamp) becomes ``floor(extract(epoch ...))``;
- a bare ``BEGIN`` (the dashboard's "one snapshot for these reads") becomes a
  ``REPEATABLE READ READ ONLY`` transaction, PostgreSQL's single snapshot.

Results come back as plain Python numbers: PostgreSQL's ``sum()`` of a
``bigint`` is a ``numeric`` that psycopg would return as ``Decimal``. The
contract suite (tests/backends/test_contract.py) runs the queries over both
stores and compares, so a new SQLite-only spelling shows up there.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

__all__ = ["PgQueryConnection", "is_pg_url", "translate"]

_PLUS_COLUMN = re.compile(r"(?<![\w)])\+(?=[A-Za-z_])")
_BARE_MAX = re.compile(
    r"SELECT (\w+), (\w+), max\((\w+)\) FROM (\w+) WHERE (.*?) GROUP BY \1\s*$", re.S)
_EPOCH = re.compile(r"CAST\(strftime\('%s', (\w+)\) AS INTEGER\)")
_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


def is_pg_url(target: object) -> bool:
    """Whether a store target (file path or URL) names a PostgreSQL database."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


@functools.lru_cache(maxsize=256)
def translate(sql: str) -> str:
    """The PostgreSQL spelling of one statement of the SQLite read side."""
    if sql.strip().upper() in ("BEGIN", "BEGIN DEFERRED"):
        return _BEGIN
    sql = _EPOCH.sub(r"CAST(floor(extract(epoch FROM \1::timestamp)) AS BIGINT)", sql)
    m = _BARE_MAX.match(sql.strip())
    if m:
        key, value, ts, table, where = m.groups()
        sql = (f"SELECT DISTINCT ON ({key}) {key}, {value}, {ts} FROM {table} WHERE {where}"
               f" ORDER BY {key}, {ts} DESC")
    sql = _PLUS_COLUMN.sub("", sql)
    return sql.replace("%", "%%").replace("?", "%s")


def _plain(row: Sequence[Any]) -> tuple[Any, ...]:
    return tuple((int(v) if v == v.to_integral_value() else float(v))
                 if isinstance(v, Decimal) else v for v in row)


class _Cursor:
    __slots__ = ("_cur",)

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    @property
    def description(self) -> Any:
        return self._cur.description

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self._cur.fetchone()
        return None if row is None else _plain(row)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [_plain(r) for r in self._cur.fetchall()]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for row in self._cur:
            yield _plain(row)


class PgQueryConnection:
    """Wraps a psycopg connection with the ``execute`` the query functions call."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    def open(cls, url: str, timeout: float = 5.0) -> PgQueryConnection:
        from instrument.storage.postgresql import connect

        return cls(connect(url, timeout=timeout, migrate_schema=False))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        return _Cursor(self.conn.execute(translate(sql), tuple(params)))

    @property
    def in_transaction(self) -> bool:
        """Inside a transaction (or a failed one), as ``sqlite3.Connection.in_transaction``."""
        return int(self.conn.info.transaction_status) != 0  # 0: psycopg's IDLE

    @property
    def usable(self) -> bool:
        """False once the connection was closed or the server went away."""
        return not (self.conn.closed or self.conn.broken)

    def close(self) -> None:
        self.conn.close()
