"""Cumulative totals for the Prometheus exposition, added by every writer (schema migration 4).

Each worker's flusher adds its batch's *deltas* to one row per series in the
shared store, inside the batch's own transaction. A scrape then reads a fixed
number of rows whatever the number of workers ever started, and because rows
are only ever added to (retention leaves these tables alone) a counter never
goes backwards when gunicorn recycles a worker with ``--max-requests``: the
dead worker's counts are already in the sums.

The row building here is dialect-neutral; the SQL is SQLite's, and the
PostgreSQL backend reuses :func:`total_rows` with its own statements.

Besides the request series, ``metric_total_counters`` carries exceptions by
type and the kit's own counters for this process: samples written, samples
dropped (buffer full, or given up after too many failed flushes), flush errors
and the last flush time (kept with ``max``). Process-level counters are read
from the running kit and only their increase since the previous batch is
added; the increase travels with the batch, so a batch retried after a rolled
back transaction adds it exactly once.

Duration buckets are kept one per doubling: the fine bucket index (16 per doubling,
:mod:`instrument.core.histogram`) floored to a multiple of 16. The exposition's ``le``
bounds are powers of two, edges of those coarse buckets, so its counts are exactly
what the fine buckets give (rows written at fine resolution before sum the same way),
and a batch adds ~5 times fewer rows: the upserts were the costliest part of a flush.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from instrument.core.aggregate import OVERFLOW, Batch
from instrument.core.histogram import PER_DOUBLING
from instrument.core.inflight import write_in_flight
from instrument.storage.sqlite_metrics import insert_rows

__all__ = [
    "KIT_METRICS",
    "TotalsState",
    "batch_rows",
    "instance_name",
    "read_totals",
    "total_rows",
    "write_totals",
]

#: metric names of the kit's own rows in metric_total_counters.
KIT_METRICS = ("kit_samples", "kit_dropped", "kit_flush_errors", "kit_last_flush")

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


def instance_name() -> str:
    """The host label rows are written under: ``INSTRUMENT_INSTANCE``, else the host name."""
    from instrument.core.runtime import runtime

    settings = runtime.settings
    name = getattr(settings, "instance", None) if settings is not None else None
    return name or socket.gethostname()


# -- process counters: deltas that travel with the batch ----------------------------------
_fork_drops = [0]


def _note_fork() -> None:
    # A forked child inherits the parent's drop counter; only its own drops are its delta.
    try:
        from instrument.core.runtime import runtime

        _fork_drops[0] = runtime.recorder.dropped
    except Exception:  # pragma: no cover - never break a fork
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork)


class TotalsState:
    """What one backend already added for this process, and the batch in flight."""

    __slots__ = ("batch", "deltas", "dropped", "errors", "names", "pid")

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.dropped = -1  # baseline taken from the flusher on the first batch
        self.errors = 0
        # A weak reference: a strong one kept the last batch (raw rows and all) alive
        # until the next flush, megabytes at a few thousand requests per second.
        self.batch: weakref.ref[Batch] | None = None
        self.deltas: tuple[int, int] = (0, 0)
        self.names: dict[str, set[str]] | None = None

    def deltas_for(self, batch: Batch) -> tuple[int, int]:
        """(dropped, flush errors) increases to add with ``batch``; the same on a retry."""
        if self.batch is not None and self.batch() is batch:  # a retry of the same batch
            return self.deltas
        from instrument.core.runtime import runtime

        dropped = runtime.recorder.dropped
        errors = 0
        flusher = runtime.flusher
        if self.dropped < 0:
            # Drops from before this flusher started (an earlier configure(), or the parent
            # before a fork) belong to whatever store was configured then.
            start = getattr(flusher, "drops_at_start", None)
            self.dropped = max(_fork_drops[0], start if start is not None else dropped)
        if flusher is not None:
            for state in flusher.states:
                dropped += state.samples_lost
                errors += state.errors_total
        # A new flusher (configure() again) restarts its own counts: never add a negative.
        d = (max(0, dropped - self.dropped), max(0, errors - self.errors))
        self.dropped, self.errors = dropped, errors
        self.batch, self.deltas = weakref.ref(batch), d
        return d


_states: weakref.WeakKeyDictionary[Any, TotalsState] = weakref.WeakKeyDictionary()


def state_of(owner: Any) -> TotalsState:
    """The owner's (a backend's) state for this process; a fresh one after fork."""
    state = _states.get(owner)
    if state is None or state.pid != os.getpid():
        state = _states[owner] = TotalsState()
    return state


# -- rows --------------------------------------------------------------------------------
def _max_names() -> int:
    from instrument.core.runtime import runtime

    settings = runtime.settings
    return settings.max_routes if settings is not None else 1000


def total_rows(batch: Batch, host: str, deltas: tuple[int, int], known: dict[str, set[str]],
               max_names: int, now: float | None = None
               ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]],
                          list[tuple[Any, ...]]]:
    """Rows to add for one batch: series totals, buckets, summed counters and max counters.

    ``known`` maps kind to the names the store already has for this host; a new
    name beyond ``max_names`` per kind is written as ``__overflow__``, so the
    guard holds across workers and a name once exported stays exported.
    """

    def guard(kind: str, name: str) -> str:
        names = known.setdefault(kind, set())
        if name in names:
            return name
        if len(names) < max_names:
            names.add(name)
            return name
        names.add(OVERFLOW)
        return OVERFLOW

    series: dict[tuple[Any, ...], list[Any]] = {}
    durations: dict[tuple[Any, ...], dict[int, int]] = {}  # per (kind, name, method)
    step = PER_DOUBLING
    for (_, kind, name, method, status), v in batch.rollups.items():
        name = guard(kind, name)
        key = (host, kind, name, method, status)
        row = series.get(key)
        if row is None:
            series[key] = [v[0], v[1], v[2], v[5], v[6]]
        else:
            row[0] += v[0]
            row[1] += v[1]
            row[2] += v[2]
            row[3] += v[5]
            row[4] += v[6]
        per = durations.get(key[1:4])
        if per is None:
            per = durations[key[1:4]] = {}
        for bucket, count in v[7].items():  # small int keys: far cheaper than tuple keys
            bucket = bucket // step * step
            per[bucket] = per.get(bucket, 0) + count
    buckets: dict[tuple[Any, ...], int] = {
        (host, "duration", kind, name, method, bucket): count
        for (kind, name, method), per in durations.items() for bucket, count in per.items()}
    for (family, kind, name, method, bucket), count in batch.sizes.items():
        bkey = (host, family, kind, guard(kind, name), method, bucket)
        buckets[bkey] = buckets.get(bkey, 0) + count
    sums: dict[tuple[Any, ...], float] = {}
    for (kind, name, method, exc), count in batch.exceptions.items():
        ckey = (host, "exceptions", kind, guard(kind, name), method, exc)
        sums[ckey] = sums.get(ckey, 0) + count
    for metric, value in (("kit_samples", batch.samples), ("kit_dropped", deltas[0]),
                          ("kit_flush_errors", deltas[1])):
        sums[(host, metric, "", "", "", "")] = value
    last = [(host, "kit_last_flush", "", "", "", "", time.time() if now is None else now)]
    return ([(*k, *v) for k, v in series.items()], [(*k, c) for k, c in buckets.items()],
            [(*k, v) for k, v in sums.items()], last)


KNOWN_NAMES_SQL = "SELECT DISTINCT kind, name FROM metric_totals WHERE host = {param}"


def batch_rows(conn: Any, batch: Batch, owner: Any, host: str, param: str = "?"
               ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]],
                          list[tuple[Any, ...]]]:
    """:func:`total_rows` for ``owner`` (a backend) in this process, names guarded via ``conn``."""
    state = state_of(owner)
    if state.names is None or _has_new_names(batch, state.names):
        known: dict[str, set[str]] = {}  # other workers may have added names since
        for kind, name in conn.execute(KNOWN_NAMES_SQL.format(param=param), (host,)).fetchall():
            known.setdefault(kind, set()).add(name)
        state.names = known
    # A name added here but rolled back only makes the guard a little stricter until the
    # next new name reloads the set from the store.
    rows = total_rows(batch, host, state.deltas_for(batch), state.names, _max_names())
    return rows


def write_totals(conn: sqlite3.Connection, batch: Batch, owner: Any) -> None:
    """Add one batch to the totals; call inside the batch's transaction (``owner``: backend)."""
    host = instance_name()
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


def _has_new_names(batch: Batch, names: Mapping[str, set[str]]) -> bool:
    for key in batch.rollups:
        got = names.get(key[1])
        if got is None or key[2] not in got:
            return True
    return False


# -- reading -----------------------------------------------------------------------------
SERIES_SQL = (
    "SELECT kind, name, method, status_code, sum(count), sum(errors), sum(sum_ms),"
    " sum(request_bytes), sum(response_bytes) FROM metric_totals{where}"
    " GROUP BY kind, name, method, status_code"
)
BUCKETS_SQL = (
    "SELECT family, kind, name, method, bucket, sum(count) FROM metric_total_buckets{where}"
    " GROUP BY family, kind, name, method, bucket"
)
COUNTERS_SQL = (
    "SELECT metric, kind, name, method, label, {agg} FROM metric_total_counters{where}"
    " GROUP BY metric, kind, name, method, label"
)


def read_totals(conn: Any, host: str | None = None, param: str = "?"
                ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Series, bucket and counter rows summed over hosts (or for one ``host``).

    Works on any DB-API connection with ``execute``; ``param`` is its placeholder.
    ``kit_last_flush`` is a maximum, not a sum, so counters are read in two groups.
    """
    where = "" if host is None else f" WHERE host = {param}"
    args: tuple[Any, ...] = () if host is None else (host,)
    series = conn.execute(SERIES_SQL.format(where=where), args).fetchall()
    buckets = conn.execute(BUCKETS_SQL.format(where=where), args).fetchall()
    cwhere = (" WHERE metric <> 'kit_last_flush'" if host is None
              else f" WHERE host = {param} AND metric <> 'kit_last_flush'")
    counters = conn.execute(COUNTERS_SQL.format(where=cwhere, agg="sum(value)"), args).fetchall()
    lwhere = (" WHERE metric = 'kit_last_flush'" if host is None
              else f" WHERE host = {param} AND metric = 'kit_last_flush'")
    counters += conn.execute(COUNTERS_SQL.format(where=lwhere, agg="max(value)"), args).fetchall()
    return series, buckets, counters


def iter_hosts(conn: Any) -> Iterable[str]:
    """Hosts that have totals in the store."""
    return [r[0] for r in conn.execute("SELECT DISTINCT host FROM metric_totals").fetchall()]
