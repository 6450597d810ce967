"""Log search on a PostgreSQL store: :func:`instrument.logsearch.search_logs` for a fleet.

The filters and their meaning are SQLite's (level is a minimum, a logger
matches itself and its children, ``since`` inclusive, ``until`` exclusive,
newest first by id, paging with ``before_id``); only the full-text part
differs. ``text`` keeps FTS5's query language (words, ``"a phrase"``,
``prefix*``, ``AND``/``OR``/``NOT``, parentheses), compiled here into
``tsquery`` operators over one bound parameter per word or phrase, each
parsed by PostgreSQL's own parser (``phraseto_tsquery('simple', ...)``) so that
words with punctuation match what was indexed. It runs against the GIN index of
schema migration 2: ``to_tsvector('simple', message || ' ' || exception)``.

Rows carry the ``host`` that stored them besides SQLite's columns. Every value
is a bound parameter; only fixed SQL fragments are joined.
"""

from __future__ import annotations

import re
from typing import Any

from instrument.storage.logquery import COLUMNS, LogQueryError, When, as_items, checked
from instrument.storage.pg_read import PgQueryConnection, is_pg_url

__all__ = ["compile_text", "handles", "search_logs"]

_DOCUMENT = "to_tsvector('simple'::regconfig, message || ' ' || coalesce(exception, ''))"
_SELECT = ", ".join((*COLUMNS, "host"))
_TOKEN = re.compile(r'\s*(?:"((?:[^"]|"")*)"|(\()|(\))|(\*)|([^\s()"*]+))')


def handles(db: object) -> bool:
    """Whether ``db`` is a PostgreSQL store (a read connection or a URL)."""
    return isinstance(db, PgQueryConnection) or is_pg_url(db)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # an unterminated quote: the only thing the pattern cannot take
            raise LogQueryError(f"Cannot parse search text {text!r}: unterminated string.")
        phrase, opening, closing, star, word = m.groups()
        if phrase is not None:
            out.append(("phrase", phrase.replace('""', '"')))
        elif opening or closing:
            out.append((opening or closing, ""))
        elif star:
            out.append(("*", ""))
        elif word in ("AND", "OR", "NOT"):
            out.append((word, ""))
        else:
            out.append(("phrase", word))
        pos = m.end()
    return out


class _Parser:
    """FTS5's precedence: NOT binds tighter than AND (also implied by juxtaposition), then OR."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0
        self.params: list[str] = []

    def fail(self, why: str) -> LogQueryError:
        return LogQueryError(f"Cannot parse search text {self.text!r}: {why}. Put words with"
                             ' punctuation in double quotes, e.g. "user-42".')

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def parse(self) -> str:
        sql = self.either()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()!r}")
        return sql

    def either(self) -> str:
        sql = self.both()
        while self.peek() == "OR":
            self.i += 1
            sql = f"({sql} || {self.both()})"
        return sql

    def both(self) -> str:
        sql = self.negated()
        while self.peek() in ("AND", "phrase", "("):
            if self.peek() == "AND":
                self.i += 1
            sql = f"({sql} && {self.negated()})"
        return sql

    def negated(self) -> str:
        sql = self.primary()
        while self.peek() == "NOT":
            self.i += 1
            sql = f"({sql} && !!{self.primary()})"
        return sql

    def primary(self) -> str:
        kind = self.peek()
        if kind == "(":
            self.i += 1
            sql = self.either()
            if self.peek() != ")":
                raise self.fail("missing ')'")
            self.i += 1
            return sql
        if kind != "phrase":
            raise self.fail("expected a word or phrase" if kind is None else
                            f"expected a word or phrase, not {kind!r}")
        value = self.tokens[self.i][1]
        self.i += 1
        if value == "NEAR" and self.peek() == "(":
            raise self.fail("NEAR() is not supported on PostgreSQL")
        if self.peek() == "*":
            self.i += 1
            # Every word of it becomes a prefix: FTS5 applies the * to the last one only.
            self.params.append("'" + value.replace("\\", "\\\\").replace("'", "''") + "':*")
            return "to_tsquery('simple'::regconfig, ?)"
        self.params.append(value)
        return "phraseto_tsquery('simple'::regconfig, ?)"


def compile_text(text: str) -> tuple[str, list[str]]:
    """``(tsquery SQL expression, its parameters)`` for an FTS5-style search text."""
    parser = _Parser(text)
    return parser.parse(), parser.params


def search_logs(db: Any, *, text: str | None = None, level: int | str | None = None,
                logger: str | None = None, request_id: str | None = None, since: When = None,
                until: When = None, limit: int = 100, before_id: int | None = None,
                newest_first: bool = True) -> list[dict[str, Any]]:
    """:func:`instrument.logsearch.search_logs` over ``db``, a PgQueryConnection or URL."""
    limit, n, since_iso, until_iso = checked(level, since, until, limit)
    where: list[str] = []
    params: list[Any] = []
    text = text.strip() if text else None
    if text:
        expr, words = compile_text(text)
        where.append(f"{_DOCUMENT} @@ {expr}")
        params += words
    if n is not None:
        where.append("levelno >= ?")
        params.append(n)
    if logger:
        where.append("(logger = ? OR starts_with(logger, ?))")  # starts_with: any collation
        params += [logger, logger + "."]
    if request_id:
        where.append("request_id = ?")
        params.append(request_id)
    if since_iso is not None:
        where.append("timestamp >= ?")
        params.append(since_iso)
    if until_iso is not None:
        where.append("timestamp < ?")
        params.append(until_iso)
    if before_id is not None:
        where.append("id < ?" if newest_first else "id > ?")
        params.append(int(before_id))
    order = "DESC" if newest_first else "ASC"
    sql = (f"SELECT {_SELECT} FROM logs{' WHERE ' if where else ''}{' AND '.join(where)}"
           f" ORDER BY id {order} LIMIT ?")
    params.append(limit)
    if isinstance(db, PgQueryConnection):
        rows = db.execute(sql, params).fetchall()
    else:
        conn = PgQueryConnection.open(str(db))
        try:
            rows = conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    return as_items(rows, (*COLUMNS, "host"))
