"""System and application rows, and the coarser tiers summaries read (schema migration 2).

``system`` samples are ``("system", epoch_seconds, {column: value})`` with the
columns of :data:`instrument.system.reader.SYSTEM_COLUMNS`; ``app`` samples are
``("app", epoch_seconds, name, "gauge" | "counter", value, pid)``.

A day at 10 million requests is ~90,000 minute rollups and millions of
``metric_rollup_buckets`` rows; SQLite needs about a second to group those,
so a 24-hour summary cannot read them. The writer therefore also upserts, in
the same transaction:

- ``metric_rollups_coarse``: the minute rollups summed per 10 minutes, hour
  and 6 hours (``period`` 600 / 3600 / 21600);
- ``metric_histograms``: one row per (period, start, kind, name, method) with
  the whole latency histogram (all status codes) packed into a BLOB, for periods
  of a minute, 10 minutes, an hour and 6 hours.

A window is then read as whole 6-hour blocks plus at most five hours, five
10-minute blocks and nine minutes at each edge: ~15 rows per series for a day,
whatever the traffic. Each tier costs one more upsert per key and batch.

The blob is a little-endian ``array('q')``: ``[lowest bucket index, count,
count, ...]``, dense from the lowest to the highest non-empty bucket (bucket
layout in :mod:`instrument.core.histogram`). Concurrent writers merge through
the ``instrument_hist_merge(old, new)`` SQL function every writing connection
registers, so the upsert stays one statement inside ``BEGIN IMMEDIATE``.

Every table of a batch is written by :func:`insert_rows`: ~1,000 bound values
per ``INSERT ... VALUES (..), (..)`` statement rather than one statement per row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain
from typing import Any

from instrument.core.batch import SYSTEM_COLUMNS, iso_utc
from instrument.storage.histblob import merge_blobs
from instrument.storage.rows import COARSE_PERIODS, app_rows, system_rows, tier_rows

__all__ = [
    "delete_metrics_before",
    "insert_rows",
    "insert_values",
    "register",
    "write_app",
    "write_system",
    "write_tiers",
]


_COARSE_TAIL = (
    " ON CONFLICT(period, start, kind, name, method, status_code) DO UPDATE SET"
    " count = count + excluded.count, errors = errors + excluded.errors,"
    " sum_ms = sum_ms + excluded.sum_ms, max_ms = max(max_ms, excluded.max_ms),"
    " sum_ttfb_ms = sum_ttfb_ms + excluded.sum_ttfb_ms,"
    " request_bytes = request_bytes + excluded.request_bytes,"
    " response_bytes = response_bytes + excluded.response_bytes"
)
_HISTOGRAM_TAIL = (
    " ON CONFLICT(period, start, kind, name, method) DO UPDATE SET"
    " hist = instrument_hist_merge(hist, excluded.hist)"
)
UPSERT_COARSE = ("INSERT INTO metric_rollups_coarse VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                 + _COARSE_TAIL)
UPSERT_HISTOGRAM = "INSERT INTO metric_histograms VALUES (?,?,?,?,?,?)" + _HISTOGRAM_TAIL


def register(conn: sqlite3.Connection) -> None:
    """Make ``instrument_hist_merge`` available to this connection's upserts."""
    conn.create_function("instrument_hist_merge", 2, merge_blobs, deterministic=True)


# -- many rows per statement ---------------------------------------------------------------
_MAX_PARAMS = 999  # bound parameters per statement that every SQLite build accepts
# The rest of a batch, in few statements of few shapes. Each shape is a prepared statement
# the connection keeps, its program growing with its parameters: with 64/32/16/8/4/2/1 the
# cached statements held 1.4 MiB of SQLite memory; these three hold 0.5 MiB less, at the
# same instructions per sample (callgrind; a tail is a few statements of a batch's hundreds).
_TAIL_SIZES = (16, 4, 1)
_SQL: dict[tuple[str, int, int, str], str] = {}


def _sql(head: str, width: int, rows: int, tail: str) -> str:
    key = (head, width, rows, tail)
    sql = _SQL.get(key)
    if sql is None:
        group = "(" + ",".join("?" * width) + ")"
        sql = _SQL[key] = f"{head} VALUES {','.join([group] * rows)}{tail}"
    return sql


def _statements(head: str, width: int, n: int, tail: str) -> Iterator[tuple[str, int, int]]:
    """(SQL, first row, rows) covering ``n`` rows: full statements, then the tail sizes."""
    per = max(1, _MAX_PARAMS // width)
    i = 0
    if n >= per:
        sql = _sql(head, width, per, tail)
        while n - i >= per:
            yield sql, i, per
            i += per
    for size in _TAIL_SIZES:
        while n - i >= size:
            yield _sql(head, width, size, tail), i, size
            i += size


def insert_rows(conn: sqlite3.Connection, head: str, width: int,
                rows: Sequence[Sequence[Any]], tail: str = "") -> None:
    """``head VALUES (..),(..),.. tail`` for ``rows`` of ``width`` values, many rows a statement.

    One row per statement (``executemany`` of a one-row INSERT) pays SQLite's statement
    start and halt, a GIL round trip and a fresh b-tree descent for every row. Rows
    packed ~80 to a statement cost ~30 % less each (benchmarks/flusher.py), and an
    index fed increasing keys (api_metrics.timestamp) stays on its last page between
    rows of one statement. ``tail`` is an ``ON CONFLICT`` clause for upserts (keys must
    be distinct within ``rows``, as a batch's are).
    """
    # One statement's parameters at a time: a whole batch flattened at once would add
    # megabytes to the process's peak memory under load.
    for sql, i, k in _statements(head, width, len(rows), tail):
        conn.execute(sql, list(chain.from_iterable(rows[i:i + k])))


def insert_values(conn: sqlite3.Connection, head: str, width: int, values: Sequence[Any],
                  tail: str = "") -> None:
    """:func:`insert_rows` for rows held flat: ``width`` values after ``width`` values.

    A statement's parameters are then one slice of the list, not a list rebuilt from
    that many row tuples.
    """
    for sql, i, k in _statements(head, width, len(values) // width, tail):
        conn.execute(sql, values[i * width:(i + k) * width])


def write_tiers(conn: sqlite3.Connection, rollups: Mapping[tuple[Any, ...], list[Any]]) -> None:
    """Upsert the coarse rollups and histograms of a batch; call inside its transaction."""
    if rollups:
        coarse, hists = tier_rows(rollups)
        insert_rows(conn, "INSERT INTO metric_rollups_coarse", 13, coarse, _COARSE_TAIL)
        insert_rows(conn, "INSERT INTO metric_histograms", 6, hists, _HISTOGRAM_TAIL)


_INSERT_SYSTEM = (
    f"INSERT INTO system_metrics (timestamp, {', '.join(SYSTEM_COLUMNS)})"
    f" VALUES (?{',?' * len(SYSTEM_COLUMNS)})"
)
_INSERT_APP = "INSERT INTO app_metrics (timestamp, name, kind, value, pid) VALUES (?,?,?,?,?)"


def write_system(conn: sqlite3.Connection, samples: Iterable[tuple[Any, ...]]) -> None:
    """Insert ``("system", ts, {column: value})`` samples; missing columns are NULL."""
    conn.executemany(_INSERT_SYSTEM, system_rows(samples))


def write_app(conn: sqlite3.Connection, samples: Iterable[tuple[Any, ...]]) -> None:
    """Insert ``("app", ts, name, kind, value, pid)`` samples."""
    conn.executemany(_INSERT_APP, app_rows(samples))


def delete_metrics_before(conn: sqlite3.Connection, cutoff: float, chunk: int = 20_000) -> int:
    """Expire application rows and the coarse tiers older than ``cutoff`` (epoch seconds)."""
    removed = 0
    cutoff_iso = iso_utc(cutoff)
    while True:
        cur = conn.execute("DELETE FROM app_metrics WHERE id IN (SELECT id FROM app_metrics"
                           " WHERE timestamp < ? LIMIT ?)", (cutoff_iso, chunk))
        removed += cur.rowcount
        if cur.rowcount < chunk:
            break
    for period in (60, *COARSE_PERIODS):
        first = int(cutoff // period) * period  # the period holding the cutoff is kept
        if period != 60:
            removed += conn.execute("DELETE FROM metric_rollups_coarse WHERE period = ?"
                                    " AND start < ?", (period, first)).rowcount
        removed += conn.execute("DELETE FROM metric_histograms WHERE period = ? AND start < ?",
                                (period, first)).rowcount
    return removed
