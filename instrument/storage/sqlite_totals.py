"""The totals' SQLite statements: a batch's deltas upserted in its own transaction.

What the rows are and why is in :mod:`instrument.storage.totals` (shared with PostgreSQL).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from instrument.core.batch import Batch
from instrument.storage.inflight import write_in_flight
from instrument.storage.sqlite_metrics import insert_rows
from instrument.storage.totals import batch_rows, host_of

__all__ = ["write_totals"]

_UPSERT_TOTAL = (
    " ON CONFLICT(host, kind, name, method, status_code) DO UPDATE SET"
    " count = metric_totals.count + excluded.count,"
    " errors = metric_totals.errors + excluded.errors,"
    " sum_ms = metric_totals.sum_ms + excluded.sum_ms,"
    " request_bytes = metric_totals.request_bytes + excluded.request_bytes,"
    " response_bytes = metric_totals.response_bytes + excluded.response_bytes"
)
_UPSERT_BUCKET = (
    " ON CONFLICT(host, family, kind, name, method, bucket) DO UPDATE SET"
    " count = metric_total_buckets.count + excluded.count"
)
_UPSERT_COUNTER = (
    "INSERT INTO metric_total_counters VALUES (?,?,?,?,?,?,?)"
    " ON CONFLICT(host, metric, kind, name, method, label) DO UPDATE SET"
    " value = {merge}"
)
SQL_ADD = "metric_total_counters.value + excluded.value"


def write_totals(conn: sqlite3.Connection, batch: Batch, owner: Any) -> None:
    """Add one batch to the totals; call inside the batch's transaction (``owner``: backend)."""
    host = host_of(batch)
    if not (batch.samples or batch.rollups or batch.exceptions or batch.sizes):
        # Raw rows only (the flusher holds the rollups under load) or a reading alone:
        # nothing to add, and the kit's counters' increases wait for the next batch.
        write_in_flight(conn, batch, host)
        return
    series, buckets, sums, last = batch_rows(conn, batch, owner, host)
    insert_rows(conn, "INSERT INTO metric_totals", 10, series, _UPSERT_TOTAL)
    insert_rows(conn, "INSERT INTO metric_total_buckets", 7, buckets, _UPSERT_BUCKET)
    conn.executemany(_UPSERT_COUNTER.format(merge=SQL_ADD), sums)
    conn.executemany(_UPSERT_COUNTER.format(
        merge="max(metric_total_counters.value, excluded.value)"), last)
    write_in_flight(conn, batch, host)  # this process's row (migration 5)
