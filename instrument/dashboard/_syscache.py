"""System-metric series per time slot, cached, with exact invalidation by row id.

A week of readings is ~20,000 rows; grouping them on every refresh costs
~50 ms. Rows are only ever appended (``id`` grows), so after the first call
only the rows with an id above the last one seen are looked at: their
timestamps name the slots that changed, and only those slots (plus slots never
computed) are read again. A late batch written with old timestamps therefore
still shows up. Retention deletes only rows older than any window shown.

On a fleet's PostgreSQL store ids of concurrent writers do not become visible
in order, so new rows are found by ``created_at`` (the server's clock) from ten
minutes before the previous look, far longer than any write transaction; and
slots are grouped per host, then added up, so that network byte rates are each
machine's counter deltas summed, never one machine's counter minus another's.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone
from typing import Any

from instrument.core.batch import iso_utc
from instrument.dashboard._pgstore import is_pg

__all__ = ["AVERAGED", "SystemCache"]

#: Columns averaged per slot (and summarised over the window) when the file has them.
AVERAGED = ("cpu_percent", "memory_percent", "memory_used_mb", "disk_usage_percent",
            "active_connections", "process_rss_mb", "process_cpu_percent")
_SLOT = "(CAST(strftime('%s', timestamp) AS INTEGER) / ?) * ?"
_MAX_SLOTS = 20_000
_PG_HORIZON = ("SELECT to_char(timezone('UTC', now()) - interval '10 minutes',"
               " 'YYYY-MM-DD HH24:MI:SS')")


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


class SystemCache:
    """Slot rows per step and column set, plus the highest row id they have seen."""

    def __init__(self) -> None:
        self._slots: dict[tuple[int, tuple[str, ...]], dict[int, tuple[Any, ...]]] = {}
        self._seen: dict[tuple[int, tuple[str, ...]], int] = {}
        self._lock = threading.Lock()

    def slots(self, conn: sqlite3.Connection, columns: set[str], lo: int, hi: int,
              step: int) -> list[tuple[Any, ...] | None]:
        """One cached row (or None when no reading) per slot ``lo, lo+step, ... < hi``.

        A row is ``(readings, (avg, max, non-null count) per column, sent_per_s, recv_per_s)``.
        """
        names = tuple(c for c in AVERAGED if c in columns)
        key = (step, names)
        pg = is_pg(conn)
        conn.execute("BEGIN")
        try:
            if pg:
                top: Any = conn.execute(_PG_HORIZON).fetchone()[0]
                since = "created_at >= ?"
            else:
                top = conn.execute("SELECT MAX(id) FROM system_metrics").fetchone()[0] or 0
                since = "id > ?"
            with self._lock:
                cache = self._slots.setdefault(key, {})
                seen = self._seen.get(key)
                if seen is not None and top < seen:
                    cache.clear()  # the table was emptied or replaced
                elif seen is not None and (pg or top > seen):
                    for (slot,) in conn.execute(
                            f"SELECT DISTINCT {_SLOT} FROM system_metrics WHERE {since}",
                            (step, step, seen)):
                        cache.pop(slot, None)
                missing = [s for s in range(lo, hi, step) if s not in cache]
            fresh: dict[int, tuple[Any, ...] | None] = dict.fromkeys(missing)
            avgs = "".join(f", AVG({c}), MAX({c}), COUNT({c})" for c in names)
            sql = (f"SELECT {_SLOT}, COUNT(*){avgs}, MIN(network_bytes_sent),"
                   " MAX(network_bytes_sent), MIN(network_bytes_recv), MAX(network_bytes_recv),"
                   " MIN(timestamp), MAX(timestamp) FROM system_metrics"
                   f" WHERE timestamp >= ? AND timestamp < ? GROUP BY 1{', host' if pg else ''}")
            for first, last in _runs(missing, step):
                for row in conn.execute(sql, (step, step, iso_utc(first), iso_utc(last))):
                    if row[0] in fresh:
                        part = _slot_row(row[1:], len(names))
                        had = fresh[row[0]]
                        fresh[row[0]] = part if had is None else _add_rows(had, part)
        finally:
            conn.execute("COMMIT")
        with self._lock:
            cache.update({k: v or () for k, v in fresh.items()})  # (): known to be empty
            self._seen[key] = top
            if len(cache) > _MAX_SLOTS:
                for slot in sorted(cache)[: len(cache) - _MAX_SLOTS]:
                    del cache[slot]
            return [cache.get(s) or None for s in range(lo, hi, step)]

    def series(self, conn: sqlite3.Connection, columns: set[str], lo: int, hi: int,
               step: int) -> dict[str, list[Any]]:
        """Per-slot readings, averages and network byte rates, as columns."""
        names = [c for c in AVERAGED if c in columns]
        rows = self.slots(conn, columns, lo, hi, step)
        out: dict[str, list[Any]] = {"readings": [r[0] if r else 0 for r in rows]}
        for j, name in enumerate(names):
            out[name] = [r[1][j][0] if r else None for r in rows]
        out["network_sent_per_s"] = [r[2] if r else None for r in rows]
        out["network_recv_per_s"] = [r[3] if r else None for r in rows]
        return out

    def stats(self, conn: sqlite3.Connection, columns: set[str], lo: int,
              hi: int) -> dict[str, Any]:
        """Averages and maxima over minutes ``lo <= t < hi``: whole hours from the hourly
        slots, the edges from minute slots, so a week costs ~300 cached rows."""
        first_hour = -(-lo // 3600) * 3600
        last_hour = hi - hi % 3600
        if last_hour <= first_hour:
            pieces = [(lo, hi, 60)]
        else:
            pieces = [(lo, first_hour, 60), (first_hour, last_hour, 3600), (last_hour, hi, 60)]
        names = [c for c in AVERAGED if c in columns]
        acc: list[list[Any]] = [[0.0, 0, None] for _ in names]
        samples = 0
        for a, b, step in pieces:
            if b <= a:
                continue
            for row in self.slots(conn, columns, a, b, step):
                if not row:
                    continue
                samples += row[0]
                for j, (avg, mx, n) in enumerate(row[1]):
                    if n:
                        t = acc[j]
                        t[0] += avg * n
                        t[1] += n
                        t[2] = mx if t[2] is None or mx > t[2] else t[2]
        out: dict[str, Any] = {"samples": samples}
        for name, (total, n, mx) in zip(names, acc, strict=True):
            out[f"avg_{name}"] = total / n if n else None
            out[f"max_{name}"] = mx
        return out


def _slot_row(agg: tuple[Any, ...], n: int) -> tuple[Any, ...]:
    """(readings, per-column triples, sent/s, recv/s) from a grouped row."""
    s_min, s_max, r_min, r_max, first, last = agg[1 + 3 * n:]
    t0, t1 = _epoch(first), _epoch(last)
    sent = recv = None
    if t0 is not None and t1 is not None and t1 > t0:
        if s_min is not None and s_max is not None:
            sent = (s_max - s_min) / (t1 - t0)
        if r_min is not None and r_max is not None:
            recv = (r_max - r_min) / (t1 - t0)
    triples = tuple(tuple(agg[1 + 3 * j: 4 + 3 * j]) for j in range(n))
    return (agg[0], triples, sent, recv)


def _add_rows(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
    """Two hosts' rows of one slot as one: readings and rates added, averages weighted."""
    triples = []
    for (avg_a, max_a, n_a), (avg_b, max_b, n_b) in zip(a[1], b[1], strict=True):
        if not n_a or not n_b:
            triples.append((avg_a, max_a, n_a) if n_a else (avg_b, max_b, n_b))
        else:
            triples.append(((avg_a * n_a + avg_b * n_b) / (n_a + n_b), max(max_a, max_b),
                            n_a + n_b))
    return (a[0] + b[0], tuple(triples), _plus(a[2], b[2]), _plus(a[3], b[3]))


def _plus(x: float | None, y: float | None) -> float | None:
    return y if x is None else x if y is None else x + y


def _runs(slots: list[int], step: int) -> list[tuple[int, int]]:
    """Contiguous [first, end) time ranges covering the given sorted slot starts."""
    runs: list[tuple[int, int]] = []
    for s in slots:
        if runs and runs[-1][1] == s:
            runs[-1] = (runs[-1][0], s + step)
        else:
            runs.append((s, s + step))
    return runs
