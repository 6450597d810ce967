"""Log search over the SQLite logs table: filters, FTS errors, injection, retention, migration."""

from __future__ import annotations

import io
import logging
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import instrument
from instrument.backends.sqlite import SQLiteBackend, connect
from instrument.core.batch import Batch
from instrument.logs import request_context, setup_logging
from instrument.logsearch import LogQueryError, request_logs, search_logs
from instrument.storage.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp()  # inside any retention window

# (seconds after T0, level, logger, message, exception, request id)
LINES: list[tuple[int, int, str, str, str | None, str | None]] = [
    (0, logging.INFO, "app", "server started on port 8000", None, None),
    (10, logging.DEBUG, "app.db", "connection pool warmed", None, None),
    (20, logging.INFO, "app.db", "query users took 12 ms", None, "req-1"),
    (30, logging.WARNING, "app.http", "slow upstream payments", None, "req-1"),
    (40, logging.ERROR, "app.http", "payment failed", "Traceback\nTimeoutError: upstream", "req-2"),
    (50, logging.INFO, "apple", "apple logger is not app", None, None),
    (60, logging.CRITICAL, "app", "disk full on /var", None, "req-3"),
    (70, logging.INFO, "app.db", "query orders took 3 ms", None, "req-2"),
]


def samples(lines: list[tuple[int, int, str, str, str | None, str | None]],
            base: float = T0) -> list[tuple[Any, ...]]:
    return [("log", base + dt, lvl, logging.getLevelName(lvl), name, msg, exc,
             f'{{"n": {i}}}', rid, "/r" if rid else None, "GET" if rid else None)
            for i, (dt, lvl, name, msg, exc, rid) in enumerate(lines)]


@pytest.fixture
def db(db_path: Path) -> Iterator[Path]:
    backend = SQLiteBackend(str(db_path), retention_days=7)
    backend.write(Batch(other={"log": samples(LINES)}))
    backend.close()
    yield db_path


def messages(rows: list[dict[str, Any]]) -> list[str]:
    return [r["message"] for r in rows]


def test_no_filter_returns_everything_newest_first(db: Path) -> None:
    """Without filters every line comes back, newest first, with parsed extras."""
    rows = search_logs(db)
    assert messages(rows) == [x[3] for x in reversed(LINES)]
    assert rows[0]["extra"] == {"n": 7} and rows[0]["timestamp"] == "2030-01-01T00:01:10.000000"


@pytest.mark.parametrize(("text", "expected"), [
    ("query", ["query orders took 3 ms", "query users took 12 ms"]),
    ("QUERY users", ["query users took 12 ms"]),
    ('"took 3"', ["query orders took 3 ms"]),
    ("pay*", ["payment failed", "slow upstream payments"]),
    ("upstream NOT slow", ["payment failed"]),  # matched in the exception text
    ("disk OR pool", ["disk full on /var", "connection pool warmed"]),
    ("zebra", []),
])
def test_text_search(db: Path, text: str, expected: list[str]) -> None:
    """Full-text search matches words, phrases, prefixes and boolean operators."""
    assert messages(search_logs(db, text=text)) == expected


@pytest.mark.parametrize(("level", "expected"), [
    ("WARNING", ["disk full on /var", "payment failed", "slow upstream payments"]),
    ("error", ["disk full on /var", "payment failed"]),
    (logging.CRITICAL, ["disk full on /var"]),
    ("DEBUG", [x[3] for x in reversed(LINES)]),
    ("INFO", [x[3] for x in reversed(LINES) if x[1] >= logging.INFO]),
])
def test_level_is_a_minimum(db: Path, level: Any, expected: list[str]) -> None:
    """A level filter returns lines at that level and above."""
    assert messages(search_logs(db, level=level)) == expected


def test_logger_matches_itself_and_children_only(db: Path) -> None:
    """'app.db' matches app.db; 'app' matches app and app.*, never 'apple'."""
    assert messages(search_logs(db, logger="app.db")) == [
        "query orders took 3 ms", "query users took 12 ms", "connection pool warmed"]
    app = messages(search_logs(db, logger="app"))
    assert "apple logger is not app" not in app and len(app) == 7


def test_request_id_and_request_logs(db: Path) -> None:
    """A request id selects its lines; request_logs lists them oldest first."""
    assert messages(search_logs(db, request_id="req-2")) == [
        "query orders took 3 ms", "payment failed"]
    assert messages(request_logs(db, "req-1")) == [
        "query users took 12 ms", "slow upstream payments"]
    assert search_logs(db, request_id="req-404") == []


@pytest.mark.parametrize("since", [
    datetime(2030, 1, 1, 0, 0, 30, tzinfo=timezone.utc),
    datetime(2030, 1, 1, 0, 0, 30),  # naive means UTC
    datetime(2030, 1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
    T0 + 30,
    "2030-01-01T00:00:30Z",
    "2030-01-01T01:00:30+01:00",
])
def test_time_range_since_inclusive_until_exclusive(db: Path, since: Any) -> None:
    """since/until accept datetimes, epoch seconds and ISO text; since is inclusive."""
    rows = search_logs(db, since=since, until=T0 + 60)
    assert messages(rows) == ["apple logger is not app", "payment failed",
                              "slow upstream payments"]


def test_filters_combine(db: Path) -> None:
    """Text, level, logger, request id and time range narrow the result together."""
    assert messages(search_logs(db, text="took", logger="app.db", request_id="req-2",
                                level="INFO", since=T0 + 60)) == ["query orders took 3 ms"]
    assert search_logs(db, text="took", level="WARNING") == []


def test_pagination_with_limit_and_before_id(db: Path) -> None:
    """Pages of `limit` lines follow each other through before_id without overlap."""
    first = search_logs(db, limit=3)
    second = search_logs(db, limit=3, before_id=first[-1]["id"])
    third = search_logs(db, limit=3, before_id=second[-1]["id"])
    assert messages(first + second + third) == [x[3] for x in reversed(LINES)]
    text_page = search_logs(db, text="query", limit=1)
    assert messages(search_logs(db, text="query", before_id=text_page[0]["id"])) == [
        "query users took 12 ms"]


@pytest.mark.parametrize("text", ['"unterminated', "AND", "user-42", "foo:bar", "*", "(a"])
def test_fts_syntax_errors_are_value_errors(db: Path, text: str) -> None:
    """Text SQLite's FTS5 cannot parse raises LogQueryError (a ValueError) naming the text."""
    with pytest.raises(LogQueryError, match="Cannot parse search text") as info:
        search_logs(db, text=text)
    assert isinstance(info.value, ValueError) and repr(text) in str(info.value)


def test_bad_filter_values_are_value_errors(db: Path) -> None:
    """An unknown level, an unreadable time or a bad limit raise ValueError, not SQL errors."""
    for kwargs in ({"level": "LOUD"}, {"since": "yesterday"}, {"limit": 0}, {"until": []}):
        with pytest.raises(ValueError):
            search_logs(db, **kwargs)


def test_values_are_parameters_not_sql(db: Path) -> None:
    """Quotes and SQL in filter values match nothing and change nothing."""
    for evil in ("' OR '1'='1", "x'; DROP TABLE logs; --", "app%", "app_db"):
        assert search_logs(db, logger=evil) == []
        assert search_logs(db, request_id=evil) == []
    assert len(search_logs(db, text='"\'; DROP TABLE logs; --"')) == 0
    assert len(search_logs(db)) == len(LINES)


def test_retention_removes_old_lines_and_their_index(db_path: Path) -> None:
    """Lines past retention leave both the table and the full-text index."""
    now = time.time()
    backend = SQLiteBackend(str(db_path), retention_days=1)
    old = samples([(0, logging.INFO, "app", "ancient history", None, "old-1")], now - 3 * 86400)
    new = samples([(0, logging.INFO, "app", "recent history", None, "new-1")], now)
    backend.write(Batch(other={"log": new}))  # the first write also runs a retention sweep
    backend.write(Batch(other={"log": old}))  # the next sweep is minutes away
    assert messages(search_logs(db_path, text="history")) == ["ancient history", "recent history"]
    assert backend.apply_retention() >= 1
    backend.close()
    assert messages(search_logs(db_path, text="history")) == ["recent history"]
    assert search_logs(db_path, text="ancient") == []
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO logs_fts(logs_fts, rank) VALUES('integrity-check', 1)")
    conn.close()


def test_logs_table_is_migration_three_on_top_of_an_older_file(db_path: Path) -> None:
    """A file at schema version 2 gains the logs table when the backend opens it."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    for sql in MIGRATIONS[:2]:
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    assert SCHEMA_VERSION >= 3 and "CREATE TABLE IF NOT EXISTS logs" in MIGRATIONS[2]
    conn = connect(str(db_path))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    assert search_logs(db_path) == []


def test_pipeline_from_logger_to_search(db_path: Path) -> None:
    """A line logged in a request is found by its words, level and request id after a flush."""
    instrument.configure(flush_interval=0.05)
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        setup_logging("INFO", stream=io.StringIO())
        with request_context("pipe-1"):
            logging.getLogger("app.pipe").error("card declined for order 991")
        logging.getLogger("app.pipe").info("unrelated line")
        assert instrument.flush(5.0)
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
    [row] = search_logs(db_path, text="declined 991", level="ERROR", request_id="pipe-1")
    assert row["logger"] == "app.pipe" and row["pid"] is not None


def test_search_equals_a_brute_force_filter_on_out_of_order_batches(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With interleaved, out-of-order batches and tiny scan windows, every filter combination
    returns exactly the newest matches a plain Python filter finds."""
    import random

    from instrument.storage import logsearch
    from instrument.storage.logquery import iso_bound

    monkeypatch.setattr(logsearch, "_WINDOWS", (3, 7, 20))  # force every code path
    rng = random.Random(7)
    words = ["alpha", "bravo", "charlie", "delta", "echo"]
    loggers = ["app", "app.db", "app.http", "apple", "lib"]
    backend = SQLiteBackend(str(db_path), retention_days=3650)
    for batch in range(40):  # two "workers" whose batches overlap in time
        base = T0 + batch * 30 - (45 if batch % 2 else 0)
        lines = [(rng.uniform(0, 60), rng.choice([10, 20, 20, 20, 30, 40, 50]),
                  rng.choice(loggers), f"{rng.choice(words)} {rng.choice(words)} {i}",
                  None, rng.choice([None, "r1", "r2", "r3"])) for i in range(rng.randint(1, 12))]
        backend.write(Batch(other={"log": samples(lines, base)}))
    backend.close()
    conn = sqlite3.connect(db_path)
    every = conn.execute("SELECT id, timestamp, levelno, logger, message, request_id"
                         " FROM logs").fetchall()
    conn.close()
    for _ in range(300):
        kw: dict[str, Any] = {}
        if rng.random() < 0.4:
            kw["text"] = rng.choice(words)
        if rng.random() < 0.4:
            kw["level"] = rng.choice([10, 20, 30, 40, 50])
        if rng.random() < 0.4:
            kw["logger"] = rng.choice(["app", "app.db", "lib", "nothing"])
        if rng.random() < 0.2:
            kw["request_id"] = rng.choice(["r1", "r2"])
        if rng.random() < 0.5:
            kw["since"] = T0 + rng.uniform(-60, 1200)
        if rng.random() < 0.5:
            kw["until"] = T0 + rng.uniform(0, 1300)
        limit = rng.choice([1, 5, 20, 500])
        monkeypatch.setattr(logsearch, "_RARE", rng.choice([0, 10, 5000]))  # index or walk
        newest = rng.random() < 0.8
        before = rng.choice([None, None, rng.randint(1, len(every))]) if newest else None

        def keep(row: tuple[Any, ...], kw: dict[str, Any] = kw,
                 before: int | None = before) -> bool:
            id_, ts, lvl, name, msg, rid = row
            return ((before is None or id_ < before)
                    and ("text" not in kw or kw["text"] in msg.split())
                    and ("level" not in kw or lvl >= kw["level"])
                    and ("logger" not in kw or name == kw["logger"]
                         or name.startswith(kw["logger"] + "."))
                    and ("request_id" not in kw or rid == kw["request_id"])
                    and ("since" not in kw or ts >= iso_bound(kw["since"], "since"))
                    and ("until" not in kw or ts < iso_bound(kw["until"], "until")))

        expected = sorted((r[0] for r in every if keep(r)), reverse=newest)[:limit]
        got = [r["id"] for r in search_logs(db_path, limit=limit, before_id=before,
                                            newest_first=newest, **kw)]
        assert got == expected, kw
