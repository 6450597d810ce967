"""The PostgreSQL writer's statements: one upsert per table and batch over column arrays.

A statement per row, even pipelined, costs the server a parse, bind and execute
each: thousands per batch, one per histogram bucket. Column arrays passed to
``unnest`` make it one statement per table, and keep the rows' order, which is
sorted so that every writer locks shared rows in the same order and none
deadlocks. Histogram blobs are merged in Python under row locks
(:func:`merge_histograms`), far cheaper than decoding bytes in SQL.
"""

from __future__ import annotations

from typing import Any

from instrument.storage.histblob import hist_low, hist_value

__all__ = ["BUCKETS", "COARSE", "COUNTERS_ADD", "COUNTERS_MAX", "HISTOGRAMS", "ROLLUPS",
           "TOTALS", "TOTAL_BUCKETS", "Upsert", "merge_histograms"]

_TYPES = {"minute": "bigint", "start": "bigint", "period": "integer", "status_code": "integer",
          "bucket": "integer", "count": "bigint", "errors": "bigint", "sum_ms": "float8",
          "max_ms": "float8", "sum_ttfb_ms": "float8", "request_bytes": "bigint",
          "response_bytes": "bigint", "hist": "bytea", "value": "float8"}
_CASTS = {"bigint": int, "integer": int, "float8": float}


class Upsert:
    """One ``INSERT ... SELECT FROM unnest(column arrays) ON CONFLICT`` per table and batch."""

    def __init__(self, table: str, columns: str, key: str, update: str) -> None:
        self.columns = [c.strip() for c in columns.split(",")]
        self.types = [_TYPES.get(c, "text") for c in self.columns]
        arrays = ", ".join(f"%s::{t}[]" for t in self.types)
        sets = ", ".join(f"{c} = {expr.format(t=table, c=c)}" for c, expr in
                         (part.split("=", 1) for part in update.split(";")))
        self.sql = (f"INSERT INTO {table} ({', '.join(self.columns)}) SELECT * FROM unnest("
                    f"{arrays}) ON CONFLICT ({key}) DO UPDATE SET {sets}")

    def run(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        rows.sort(key=_order)
        arrays = []
        for column, typ in zip(zip(*rows, strict=True), self.types, strict=True):
            cast = _CASTS.get(typ)
            arrays.append([v if cast is None or v is None else cast(v) for v in column]
                          if cast is not None else list(column))
        cur.execute(self.sql, arrays)


_ADD = "{t}.{c} + excluded.{c}"
_MAX = "greatest({t}.{c}, excluded.{c})"
_ROLLUP_VALUES = "count, errors, sum_ms, max_ms, sum_ttfb_ms, request_bytes, response_bytes, host"
_ROLLUP_UPDATE = ";".join([f"count={_ADD}", f"errors={_ADD}", f"sum_ms={_ADD}",
                           f"max_ms={_MAX}", f"sum_ttfb_ms={_ADD}", f"request_bytes={_ADD}",
                           f"response_bytes={_ADD}"])
ROLLUPS = Upsert("metric_rollups", f"minute, kind, name, method, status_code, {_ROLLUP_VALUES}",
                 "minute, kind, name, method, status_code, host", _ROLLUP_UPDATE)
COARSE = Upsert("metric_rollups_coarse",
                f"period, start, kind, name, method, status_code, {_ROLLUP_VALUES}",
                "period, start, kind, name, method, status_code, host", _ROLLUP_UPDATE)
BUCKETS = Upsert("metric_rollup_buckets",
                 "minute, kind, name, method, status_code, bucket, count, host",
                 "minute, kind, name, method, status_code, bucket, host", f"count={_ADD}")
HISTOGRAMS = Upsert("metric_histograms", "period, start, kind, name, method, hist, host",
                    "period, start, kind, name, method, host",
                    "hist=instrument_hist_merge({t}.{c}, excluded.{c})")
TOTALS = Upsert("metric_totals", "host, kind, name, method, status_code, count, errors, sum_ms,"
                " request_bytes, response_bytes", "host, kind, name, method, status_code",
                ";".join(f"{c}={_ADD}" for c in ("count", "errors", "sum_ms", "request_bytes",
                                                  "response_bytes")))
_LOCK_HISTOGRAMS = (
    "SELECT t.period, t.start, t.kind, t.name, t.method, t.host, t.hist FROM metric_histograms t"
    " JOIN unnest(%s::integer[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[])"
    " AS k(period, start, kind, name, method, host) USING (period, start, kind, name, method,"
    " host) ORDER BY 1, 2, 3, 4, 5, 6 FOR UPDATE OF t"
)
_UPDATE_HISTOGRAMS = (
    "UPDATE metric_histograms t SET hist = k.hist FROM unnest(%s::integer[], %s::bigint[],"
    " %s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[])"
    " AS k(period, start, kind, name, method, host, hist) WHERE (t.period, t.start, t.kind,"
    " t.name, t.method, t.host) = (k.period, k.start, k.kind, k.name, k.method, k.host)"
)


def _merge(old: bytes, new: bytes) -> bytes:
    lo = min(hist_low(old), hist_low(new))
    value = hist_value(old, lo) + hist_value(new, lo)
    return lo.to_bytes(8, "little", signed=True) + value.to_bytes(
        (value.bit_length() + 63) // 64 * 8, "little")


def merge_histograms(cur: Any, rows: list[tuple[Any, ...]]) -> None:
    """Add (period, start, kind, name, method, blob, host) histograms to the stored ones.

    Existing rows are locked and merged here (big-integer additions, see
    ``_sqlite_metrics.hist_value``), which is ~50 times cheaper than merging in
    SQL; only keys another writer creates between the lock and the insert fall
    back to the SQL ``instrument_hist_merge`` of the upsert.
    """
    if not rows:
        return
    by_key = {(p, s, k, n, m, h): blob for p, s, k, n, m, blob, h in rows}
    keys = sorted(by_key, key=_order)
    cur.execute(_LOCK_HISTOGRAMS, [list(c) for c in zip(*keys, strict=True)])
    merged = []
    for *key, old in cur.fetchall():
        merged.append((*key, _merge(bytes(old), by_key.pop(tuple(key)))))
    if merged:
        cur.execute(_UPDATE_HISTOGRAMS, [list(c) for c in zip(*merged, strict=True)])
    HISTOGRAMS.run(cur, [(p, s, k, n, m, blob, h) for (p, s, k, n, m, h), blob in by_key.items()])


_COUNTER_COLUMNS = "host, metric, kind, name, method, label, value"
_COUNTER_KEY = "host, metric, kind, name, method, label"
TOTAL_BUCKETS = Upsert("metric_total_buckets", "host, family, kind, name, method, bucket, count",
                       "host, family, kind, name, method, bucket", f"count={_ADD}")
COUNTERS_ADD = Upsert("metric_total_counters", _COUNTER_COLUMNS, _COUNTER_KEY, f"value={_ADD}")
COUNTERS_MAX = Upsert("metric_total_counters", _COUNTER_COLUMNS, _COUNTER_KEY, f"value={_MAX}")


def _order(row: tuple[Any, ...]) -> tuple[str, ...]:
    # One global order for every writer (str() because keys may hold None).
    return tuple(str(x) for x in row[:6])
