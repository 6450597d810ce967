"""Reading the storage tiers: which periods cover a window, and summing them.

A window [lo, hi) of whole minutes is covered by the fewest periods, coarse
first (6-hour blocks, hours, 10-minute blocks, then minutes at the edges); rollup
sums and per-route histograms are read for exactly those periods (see
``backends/_sqlite_metrics.py`` for what the writer keeps). Histograms are
summed as big integers with a 64-bit field per bucket (:func:`hist_value`).
"""

from __future__ import annotations

import math
import sqlite3
import time
from typing import Any

from instrument.core.histogram import PER_DOUBLING
from instrument.storage.histblob import hist_low, hist_pairs, hist_value
from instrument.storage.rows import COARSE_PERIODS

__all__ = [
    "FOREVER",
    "PCT_KEYS",
    "SUMS",
    "Plan",
    "bounds",
    "covered",
    "histograms",
    "latency",
    "plan",
    "rollups",
]

FOREVER = 2**62
_BASE = -10 * PER_DOUBLING  # the lowest bucket index there is (about 1 µs)
_PCTS = (50, 95, 99)
PCT_KEYS = tuple(f"p{q}_response_time_ms" for q in _PCTS)

Plan = list[tuple[int, int, int]]  # (period seconds, first start, end start) half-open


def bounds(start: float, end: float | None) -> tuple[int, int]:
    """The window as [first minute, last minute + 60) epoch seconds (open: up to forever)."""
    return int(start // 60) * 60, FOREVER if end is None else int(end // 60) * 60 + 60


def plan(lo: int, hi: int) -> Plan:
    """Cover [lo, hi) with the fewest periods: 6 hours, hours, 10 minutes, then minutes.

    An open window (``hi`` forever) takes the current hour or block whole: nothing
    after now has been recorded yet.
    """
    out: Plan = []

    def cover(lo: int, hi: int, tiers: tuple[int, ...]) -> None:
        period, rest = tiers[0], tiers[1:]
        if not rest:
            if lo < hi:
                out.append((period, lo, hi))
            return
        first = -(-lo // period) * period
        last = hi if hi >= FOREVER else hi - hi % period
        if first >= last:
            cover(lo, hi, rest)
            return
        out.append((period, first, last))
        cover(lo, first, rest)
        if last < hi:
            cover(last, hi, rest)

    cover(lo, hi, (*sorted(COARSE_PERIODS, reverse=True), 60))
    return out


def covered(lo: int, hi: int) -> float:
    """Seconds the window spans (up to now for open windows), for rates."""
    stop = time.time() if hi >= FOREVER else hi
    return max(60.0, stop - lo)


SUMS = ("sum(count), sum(errors), sum(sum_ms), max(max_ms), sum(sum_ttfb_ms),"
         " sum(request_bytes), sum(response_bytes)")


def rollups(conn: sqlite3.Connection, kind: str, plan: Plan,
            name: str | None = None) -> dict[tuple[str, str, int], list[Any]]:
    """Rollup sums per (name, method, status) over the planned periods; ``name``: one
    route's only."""
    out: dict[tuple[str, str, int], list[Any]] = {}
    one = " AND name = ?" if name is not None else ""
    extra: tuple[Any, ...] = (kind,) if name is None else (kind, name)
    # One grouped query per range; merging their hundred-odd result rows here costs half
    # as much as having SQLite sort one UNION ALL of every row.
    for period, lo, hi in plan:
        if period == 60:
            sql = (f"SELECT name, method, status_code, {SUMS} FROM metric_rollups WHERE"
                   f" minute >= ? AND minute < ? AND kind = ?{one}"
                   " GROUP BY name, method, status_code")
            args: tuple[Any, ...] = (lo, hi, *extra)
        else:
            sql = (f"SELECT name, method, status_code, {SUMS} FROM metric_rollups_coarse WHERE"
                   f" period = ? AND start >= ? AND start < ? AND kind = ?{one}"
                   " GROUP BY name, method, status_code")
            args = (period, lo, hi, *extra)
        for name, method, status, *v in conn.execute(sql, args):
            r = out.get((name, method, status))
            if r is None:
                out[(name, method, status)] = v
            else:
                r[0] += v[0]
                r[1] += v[1]
                r[2] += v[2]
                r[3] = max(r[3], v[3])
                r[4] += v[4]
                r[5] += v[5]
                r[6] += v[6]
    return out


def histograms(conn: sqlite3.Connection, kind: str, plan: Plan,
               name: str | None = None) -> dict[tuple[str, str], tuple[int, int]]:
    """Per-route merged histograms as (lowest bucket, :func:`hist_value` sum); ``name``:
    one route's only (a route page reads just its own blobs, not every route's)."""
    if not plan:
        return {}
    part = "SELECT name, method, hist FROM metric_histograms WHERE period = ? AND start >= ?" \
           " AND start < ? AND kind = ?" + (" AND name = ?" if name is not None else "")
    sql = " UNION ALL ".join([part] * len(plan))
    extra = (kind,) if name is None else (kind, name)
    args = [a for p in plan for a in (*p, *extra)]
    blobs: dict[tuple[str, str], list[bytes]] = {}
    for name, method, blob in conn.execute(sql, args):
        blobs.setdefault((name, method), []).append(blob)
    out = {}
    for key, group in blobs.items():
        base = min(hist_low(b) for b in group)  # small integers: shift from the route's floor
        out[key] = (base, sum(hist_value(b, base) for b in group))
    return out


def latency(hist: tuple[int, int]) -> dict[str, float | None]:
    """p50/p95/p99 in one pass; same nearest-rank rule and values as ``_histogram.percentile``."""
    out: dict[str, float | None] = dict.fromkeys(PCT_KEYS)
    base, value = hist
    if not value:
        return out
    pairs = hist_pairs(value, base)
    total = sum(c for _, c in pairs)
    ranks = [max(1, math.ceil(total * q / 100.0)) for q in _PCTS]
    seen = 0
    i = 0
    for index, count in pairs:
        seen += count
        while i < len(ranks) and seen >= ranks[i]:
            out[PCT_KEYS[i]] = 2.0 ** ((max(index + 0.5, _BASE)) / PER_DOUBLING)
            i += 1
        if i == len(ranks):
            break
    return out
