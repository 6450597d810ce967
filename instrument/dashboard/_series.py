"""Request time series over the store's minute, 10-minute and hour tiers, with a histogram cache.

A point of a latency series needs the merged histogram of every route for its
slot: for a 7-day chart that is thousands of histogram blobs to decode. Finished
slots rarely change, so merged histograms are cached per slot. A cache entry is
keyed by the slot and carries the request count it was built from; the same
read transaction that fetches the slot's rollup row also gives its current
count, and an entry whose count differs (a late flush from another process
landed in that minute) is rebuilt. Histogram and rollup rows are written in one
transaction by the SQLite backend, so equal counts mean equal histograms.
"""

from __future__ import annotations

import math
import sqlite3
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from instrument.core.histogram import PER_DOUBLING
from instrument.storage.histblob import hist_value
from instrument.storage.rows import COARSE_PERIODS

__all__ = ["METRICS", "HistogramCache", "Slot", "request_series"]

#: Lowest bucket index the histogram layout produces (2**-10 ms); every blob starts at or above it.
BASE = -160

#: Series the timeseries endpoint can return, with what they mean.
METRICS: dict[str, str] = {
    "requests": "requests in the slot",
    "rate": "requests per second",
    "errors": "responses with status >= 500 or an exception",
    "error_rate": "errors as a percentage of requests",
    "client_errors": "responses with a 4xx status",
    "latency_avg": "mean duration (ms)",
    "latency_p50": "median duration (ms)",
    "latency_p95": "95th percentile duration (ms)",
    "latency_p99": "99th percentile duration (ms)",
    "latency_max": "longest duration (ms)",
    "ttfb_avg": "mean time to first byte (ms)",
    "bytes_in": "request body bytes",
    "bytes_out": "response body bytes",
}
_PERCENTILES = {"latency_p50": 50.0, "latency_p95": 95.0, "latency_p99": 99.0}
_QS = (50.0, 95.0, 99.0)


class Slot:
    """Totals of one time slot; ``hist`` is a :func:`hist_value` integer."""

    __slots__ = ("bytes_in", "bytes_out", "client_errors", "count", "errors", "hist", "max_ms",
                 "pcts", "sum_ms", "sum_ttfb_ms")

    def __init__(self) -> None:
        self.count = self.errors = self.client_errors = self.bytes_in = self.bytes_out = 0
        self.sum_ms = self.max_ms = self.sum_ttfb_ms = 0.0
        self.hist = 0
        self.pcts: tuple[float | None, ...] | None = None

    def value(self, metric: str, step: int) -> float | None:
        n = self.count
        if metric == "requests":
            return n
        if metric == "rate":
            return n / step
        if metric == "errors":
            return self.errors
        if metric == "client_errors":
            return self.client_errors
        if metric == "bytes_in":
            return self.bytes_in
        if metric == "bytes_out":
            return self.bytes_out
        if not n:
            return 0.0 if metric == "error_rate" else None
        if metric == "error_rate":
            return 100.0 * self.errors / n
        if metric == "latency_avg":
            return self.sum_ms / n
        if metric == "latency_max":
            return self.max_ms
        if metric == "ttfb_avg":
            return self.sum_ttfb_ms / n
        if self.pcts is None:
            self.pcts = percentiles(self.hist, _QS)
        return self.pcts[_QS.index(_PERCENTILES[metric])]


def percentiles(hist: int, qs: Sequence[float]) -> tuple[float | None, ...]:
    """Nearest-rank percentiles of a :func:`hist_value` histogram, in one pass.

    Same rule and values as :func:`instrument.core.histogram.percentile`: the
    geometric middle of the bucket holding the ranked sample.
    """
    if not hist:
        return tuple(None for _ in qs)
    counts = array("q")
    counts.frombytes(hist.to_bytes((hist.bit_length() + 63) // 64 * 8, "little"))
    if sys.byteorder != "little":
        counts.byteswap()
    total = sum(counts)
    ranks = [max(1, math.ceil(total * q / 100.0)) for q in qs]
    order = sorted(range(len(qs)), key=ranks.__getitem__)
    out: list[float | None] = [None] * len(qs)
    seen = 0
    k = 0
    for i, c in enumerate(counts):
        if not c:
            continue
        seen += c
        while k < len(order) and seen >= ranks[order[k]]:
            index = BASE + i
            out[order[k]] = 2.0 ** ((index if index <= BASE else index + 0.5) / PER_DOUBLING)
            k += 1
        if k == len(order):
            break
    return tuple(out)


class HistogramCache:
    """Bounded LRU of merged slot histograms, shared by the threads of one dashboard."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[Any, ...], Slot] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[Any, ...], count: int) -> Slot | None:
        """The cached slot (histogram and percentiles) if it was built from ``count`` requests."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None or entry.count != count:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: tuple[Any, ...], slot: Slot) -> None:
        with self._lock:
            self._data[key] = slot
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def _filters(route: str | None, method: str | None) -> tuple[str, tuple[str, ...]]:
    sql, args = "", ()  # type: tuple[str, tuple[str, ...]]
    if route is not None:
        sql, args = " AND name = ?", (route,)
    if method is not None:
        sql, args = sql + " AND method = ?", (*args, method)
    return sql, args


def request_series(conn: sqlite3.Connection, cache: HistogramCache, lo: int, hi: int, step: int,
                   metrics: Sequence[str], *, kind: str = "http", route: str | None = None,
                   method: str | None = None) -> list[Slot]:
    """One :class:`Slot` per ``step`` seconds from ``lo`` (aligned to ``step``) up to ``hi``."""
    # The coarsest tier whose period divides the step: 10-minute and hourly rows when
    # they fit, minute rows otherwise (``lo`` is a multiple of ``step``, so of the period).
    period = max((p for p in COARSE_PERIODS if step % p == 0), default=60)
    args0: tuple[int, ...]
    if period == 60:
        source, args0 = "metric_rollups WHERE minute >= ? AND minute < ?", (lo, hi)
        col = "minute"
    else:
        source = "metric_rollups_coarse WHERE period = ? AND start >= ? AND start < ?"
        args0, col = (period, lo, hi), "start"
    extra, args = _filters(route, method)
    n = (hi - lo) // step
    slots = [Slot() for _ in range(n)]
    conn.execute("BEGIN")  # one snapshot: rollup counts and histograms agree
    try:
        # Grouped by the tier's own time column, the primary key's order: no sort, about
        # half the cost of grouping by slot and status; rows are folded into slots here.
        rows = conn.execute(
            f"SELECT {col}, SUM(count), SUM(errors), SUM(CASE WHEN status_code >= 400 AND"
            f" status_code < 500 THEN count ELSE 0 END), SUM(sum_ms), MAX(max_ms),"
            f" SUM(sum_ttfb_ms), SUM(request_bytes), SUM(response_bytes)"
            f" FROM {source} AND kind = ?{extra} GROUP BY {col}",
            (*args0, kind, *args)).fetchall()
        for t, count, errors, client, sum_ms, max_ms, ttfb, qb, rb in rows:
            s = slots[(t - lo) // step]
            s.count += count
            s.errors += errors
            s.client_errors += client
            s.sum_ms += sum_ms
            if max_ms > s.max_ms:
                s.max_ms = max_ms
            s.sum_ttfb_ms += ttfb
            s.bytes_in += qb
            s.bytes_out += rb
        if any(m in _PERCENTILES for m in metrics):
            _fill_histograms(conn, cache, slots, lo, step, period, kind, route, method)
    finally:
        conn.execute("COMMIT")
    return slots


def _fill_histograms(conn: sqlite3.Connection, cache: HistogramCache, slots: list[Slot], lo: int,
                     step: int, period: int, kind: str, route: str | None,
                     method: str | None) -> None:
    missing: list[int] = []
    for i, s in enumerate(slots):
        if not s.count:
            continue
        cached = cache.get((kind, route, method, step, lo + i * step), s.count)
        if cached is None:
            missing.append(i)
        else:
            s.hist = cached.hist
            s.pcts = cached.pcts = cached.pcts or percentiles(cached.hist, _QS)
    if not missing:
        return
    extra, args = _filters(route, method)
    # Contiguous runs of missing slots become one range query each.
    runs: list[tuple[int, int]] = []
    for i in missing:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    sql = (f"SELECT (start - ?) / ?, hist FROM metric_histograms WHERE period = ? AND kind = ?"
           f" AND start >= ? AND start < ?{extra}")
    for first, end in runs:
        for i, blob in conn.execute(sql, (lo, step, period, kind, lo + first * step,
                                          lo + end * step, *args)):
            slots[i].hist += hist_value(blob, BASE)
    for i in missing:
        s = slots[i]
        s.pcts = percentiles(s.hist, _QS)
        cache.put((kind, route, method, step, lo + i * step), s)
