"""Cumulative totals for the Prometheus exposition: the rows every writer adds, in any dialect.

Each worker's flusher adds its batch's *deltas* to one row per series in the
shared store, inside the batch's own transaction. A scrape then reads a fixed
number of rows whatever the number of workers ever started, and because rows
are only ever added to (retention leaves these tables alone) a counter never
goes backwards when gunicorn recycles a worker with ``--max-requests``: the
dead worker's counts are already in the sums.

Besides the request series, ``metric_total_counters`` carries exceptions by
type and the kit's own counters for this process: samples written, samples
dropped (buffer full, or given up after too many failed flushes), flush errors
and the last flush time (kept with ``max``). Process-level counters come with
the batch (its :class:`~instrument.core.batch.Origin`) and only their increase
since the previous batch is added; the increase is remembered with the batch,
so a batch retried after a rolled back transaction adds it exactly once.

Duration buckets are kept one per doubling: the fine bucket index (16 per doubling,
:mod:`instrument.core.histogram`) floored to a multiple of 16. The exposition's ``le``
bounds are powers of two, edges of those coarse buckets, so its counts are exactly
what the fine buckets give (rows written at fine resolution before sum the same way),
and a batch adds ~5 times fewer rows: the upserts were the costliest part of a flush.

The SQL that writes them is each store's (:mod:`instrument.storage.sqlite_totals`,
:mod:`instrument.storage.postgresql`); the reading SQL here works on both.
"""

from __future__ import annotations

import os
import socket
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from instrument.core.batch import OVERFLOW, Batch
from instrument.core.histogram import PER_DOUBLING

__all__ = [
    "KIT_METRICS",
    "TotalsState",
    "batch_rows",
    "host_of",
    "iter_hosts",
    "read_totals",
    "state_of",
    "total_rows",
]

#: metric names of the kit's own rows in metric_total_counters.
KIT_METRICS = ("kit_samples", "kit_dropped", "kit_flush_errors", "kit_last_flush")

_MAX_NAMES = 1000  # the cardinality guard's default, for batches built by hand


class TotalsState:
    """What one backend already added for this process, and the batch in flight."""

    __slots__ = ("batch", "deltas", "dropped", "errors", "names", "pid", "run")

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.run = -1  # the flusher whose counts ``dropped`` and ``errors`` are
        self.dropped = 0
        self.errors = 0
        # A weak reference: a strong one kept the last batch (raw rows and all) alive
        # until the next flush, megabytes at a few thousand requests per second.
        self.batch: weakref.ref[Batch] | None = None
        self.deltas: tuple[int, int] = (0, 0)
        self.names: dict[str, set[str]] | None = None

    def deltas_for(self, batch: Batch) -> tuple[int, int]:
        """(dropped, flush errors) increases to add with ``batch``; the same on a retry.

        The batch's origin carries its flusher's counts since it started; a new flusher
        (``configure()`` again, or a forked child's) starts from 0, and drops from before
        it belong to whatever store was configured then. A batch built by hand adds none.
        """
        if self.batch is not None and self.batch() is batch:  # a retry of the same batch
            return self.deltas
        origin = batch.origin
        if origin is None:
            d = (0, 0)
        else:
            if origin.run != self.run:
                self.run, self.dropped, self.errors = origin.run, 0, 0
            d = (max(0, origin.dropped - self.dropped), max(0, origin.errors - self.errors))
            self.dropped = max(self.dropped, origin.dropped)
            self.errors = max(self.errors, origin.errors)
        self.batch, self.deltas = weakref.ref(batch), d
        return d


_states: weakref.WeakKeyDictionary[Any, TotalsState] = weakref.WeakKeyDictionary()


def state_of(owner: Any) -> TotalsState:
    """The owner's (a backend's) state for this process; a fresh one after fork."""
    state = _states.get(owner)
    if state is None or state.pid != os.getpid():
        state = _states[owner] = TotalsState()
    return state


def host_of(batch: Batch) -> str:
    """The host label ``batch``'s rows go under: its origin's, else this machine's name."""
    origin = batch.origin
    return origin.host if origin is not None else socket.gethostname()


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
    rows = total_rows(batch, host, state.deltas_for(batch), state.names,
                      batch.origin.max_names if batch.origin is not None else _MAX_NAMES)
    return rows


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
