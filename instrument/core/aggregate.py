"""Turns drained sample tuples into one batch: raw rows plus per-minute rollups.

This is where every allocation the request path avoided happens: timestamps
are formatted, exception types named, routes guarded against cardinality
explosions and latencies bucketed. It runs only on the flusher thread.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from typing import Any

from instrument.core.batch import OVERFLOW, UNMATCHED, Batch, iso_utc
from instrument.core.buffer import (
    KIND_CALL,
    KIND_CLIENT,
    KIND_HTTP,
    KIND_PROFILE,
    KIND_TASK,
    KIND_TASK_WAIT,
)
from instrument.core.errors import Grouper
from instrument.core.exemplars import Picker
from instrument.core.histogram import PER_DOUBLING

__all__ = ["Aggregator"]


_log2 = math.log2
_MIN_INDEX = -10 * PER_DOUBLING
_STATUS_CODES: dict[str, int] = {}  # WSGI status line -> code, bounded (flusher thread only)
# microseconds n as ".mmm" + "uuu": _DOT3[n // 1000] + _D3[n % 1000] == ".%06d" % n
_D3 = [f"{i:03d}" for i in range(1000)]
_DOT3 = ["." + d for d in _D3]


class _Clock:
    """Maps perf_counter readings to wall-clock seconds, refreshed every batch."""

    __slots__ = ("_prefix", "_sec", "offset")

    def __init__(self) -> None:
        self.offset = 0.0
        self._sec = -1
        self._prefix = ""
        self.refresh()

    def refresh(self) -> None:
        self.offset = time.time() - time.perf_counter()

    def iso(self, ts: float) -> str:
        sec = int(ts)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{int((ts - sec) * 1e6):06d}"


class Aggregator:
    """Stateful across batches only for the cardinality guard and the clock."""

    def __init__(self, max_routes: int = 1000, raw_rows: bool = True,
                 picker: Picker | None = None, grouper: Grouper | None = None) -> None:
        self.max_routes = max_routes
        self.raw_rows = raw_rows
        self.grouper = grouper if grouper is not None else Grouper()  # unhandled exceptions
        self.picker = picker  # chooses exemplars among the candidates adapters mark
        self._names: dict[str, set[str]] = {}
        self._clock = _Clock()
        self.pid = os.getpid()

    def _guard(self, kind: str, name: str) -> str:
        names = self._names.get(kind)
        if names is None:
            names = self._names[kind] = set()
        if name in names:
            return name
        if len(names) < self.max_routes:
            names.add(name)
            return name
        return OVERFLOW

    def aggregate(self, samples: Iterable[tuple[Any, ...]], into: Batch | None = None) -> Batch:
        """One batch for ``samples``; with ``into``, only their raw rows and other samples.

        ``into`` (a batch held across flush cycles) then receives the rollups, exceptions,
        sizes and sample count, and the returned batch counts 0 samples.
        """
        # One flat loop: the rollup, size and exception updates are inlined rather than
        # called per sample, which halves the cost of a batch (benchmarks/flusher.py).
        # Whatever depends only on the second (its text, its minute) is computed once per
        # second; sizes are counted per rollup under small int keys and turned into
        # batch.sizes once per rollup at the end.
        batch = Batch()
        acc = batch if into is None else into
        clock = self._clock
        clock.refresh()
        offset = clock.offset
        sec, prefix = clock._sec, clock._prefix
        sec_f, sec_end, minute = float(sec), sec + 1.0, sec - sec % 60
        strftime, gmtime = time.strftime, time.gmtime
        dot3, d3 = _DOT3, _D3
        guard = self._guard
        seen = {k: self._names.setdefault(k, set())
                for k in (KIND_HTTP, KIND_CALL, KIND_CLIENT, KIND_TASK)}
        seen_http = seen[KIND_HTTP]
        codes = _STATUS_CODES
        rollups = acc.rollups
        if into is not None:
            for held in rollups.values():  # the size counts the loop expects, removed below
                held[8:] = ({}, {})
        requests = batch.request_values
        calls = batch.call_values
        raw = self.raw_rows
        pid = self.pid
        excs = acc.exceptions
        floor, log2 = math.floor, _log2
        offer = self.picker.offer if self.picker is not None else None
        exemplars = batch.exemplar_values
        grouper = self.grouper
        offer_error = grouper.offer
        errors = batch.error_values
        n = 0
        for s in samples:
            n += 1
            kind = s[0]
            if kind == KIND_HTTP:
                # ("http", t0, t_end, t_first, route, method, status, req_b, resp_b, exc, disc)
                _, t0, t1, tf, name, method, status, qb, rb, exc, disc = s
                if status.__class__ is str:  # WSGI status line, parsed here not on the request path
                    code = codes.get(status)
                    if code is None:
                        code = _status_code(status)
                        if len(codes) < 1024:
                            codes[status] = code
                    status = code
                if name is None:
                    name = UNMATCHED
                if name not in seen_http:
                    name = guard(kind, name)
                ms = (t1 - t0) * 1000.0
                ttfb = (tf - t0) * 1000.0 if tf else None
                err = 1 if (status >= 500 or exc is not None) else 0
                ts = t0 + offset
                if ts >= sec_end or ts < sec_f:  # float compares: cheaper than int(ts)
                    sec = floor(ts)
                    sec_f, sec_end, minute = float(sec), sec + 1.0, sec - sec % 60
                    prefix = strftime("%Y-%m-%dT%H:%M:%S", gmtime(sec))
                if exc is None:
                    exc_name = None
                elif isinstance(exc, BaseException) and status >= 500:  # grouped
                    # (one a framework answered with a 4xx, its HTTPNotFound, is no bug)
                    exc_name = exc.__class__.__name__
                    detail = disc if disc.__class__ is tuple else None
                    errors.extend(offer_error(
                        exc, iso_utc(ts), minute, detail[1] if detail else None,
                        _trace_id(detail[6]) if detail else None, kind, name, method, status,
                        pid))
                else:
                    exc_name = (exc.__class__.__name__ if isinstance(exc, BaseException)
                                else exc.__name__)
                if disc.__class__ is tuple:  # a candidate exemplar, with its details
                    if offer is not None:
                        micro = floor((ts - sec_f) * 1e6)
                        row = offer(minute, name, s[4], method, status, ms, ttfb, qb, rb,
                                    exc_name, prefix + dot3[micro // 1000] + d3[micro % 1000],
                                    disc, pid)
                        if row is not None:
                            exemplars.extend(row)
                    disc = disc[0]
                if raw:
                    # two table lookups: a third of the cost of "%06d" formatting
                    micro = floor((ts - sec_f) * 1e6)  # floor(): half the cost of int()
                    requests.extend((prefix + dot3[micro // 1000] + d3[micro % 1000], name,
                                     method, status, ms, qb, rb, err, ttfb, exc_name,
                                     1 if disc else 0, pid))
                ttfb_sum = ttfb or 0.0
                extras = True
            elif kind in (KIND_CALL, KIND_CLIENT):
                # ("call", t0, t_end, name, exc)
                # ("client", t0, t_end, name, method, status, req_b, resp_b, exc)
                if kind == KIND_CALL:
                    _, t0, t1, name, exc = s
                    method, status, qb, rb = "", 0, 0, 0
                    extras = False
                else:
                    _, t0, t1, name, method, status, qb, rb, exc = s
                    extras = True
                if name not in seen[kind]:
                    name = guard(kind, name)
                ms = (t1 - t0) * 1000.0
                err = 1 if (exc is not None or status >= 500) else 0
                ts = t0 + offset
                if ts >= sec_end or ts < sec_f:  # float compares: cheaper than int(ts)
                    sec = floor(ts)
                    sec_f, sec_end, minute = float(sec), sec + 1.0, sec - sec % 60
                    prefix = strftime("%Y-%m-%dT%H:%M:%S", gmtime(sec))
                if exc is None:
                    exc_name = None
                elif isinstance(exc, BaseException):  # a @timed call that raised: grouped
                    exc_name = exc.__class__.__name__
                    errors.extend(offer_error(exc, iso_utc(ts), minute, None, None, kind, name,
                                              method, status, pid))
                else:
                    exc_name = exc.__name__
                if raw:
                    micro = floor((ts - sec_f) * 1e6)
                    calls.extend((prefix + dot3[micro // 1000] + d3[micro % 1000], kind, name,
                                  method, status, ms, exc_name, pid))
                ttfb_sum = 0.0
            elif kind == KIND_TASK:
                # ("task", t0, t_end, name, outcome, exc, queue_wait_s | None): the outcome
                # goes in the method column, so rollups count each outcome apart
                _, t0, t1, name, method, exc, wait = s
                status, qb, rb, extras, ttfb_sum = 0, 0, 0, False, 0.0
                if name not in seen[kind]:
                    name = guard(kind, name)
                ms = (t1 - t0) * 1000.0
                err = 1 if method == "failure" else 0  # a retry or a revoke is not an error
                ts = t0 + offset
                if ts >= sec_end or ts < sec_f:
                    sec = floor(ts)
                    sec_f, sec_end, minute = float(sec), sec + 1.0, sec - sec % 60
                    prefix = strftime("%Y-%m-%dT%H:%M:%S", gmtime(sec))
                if exc is None:
                    exc_name = None
                elif isinstance(exc, BaseException):  # a task that failed: grouped
                    exc_name = exc.__class__.__name__
                    errors.extend(offer_error(exc, iso_utc(ts), minute, None, None, kind, name,
                                              method, 0, pid))
                else:
                    exc_name = exc.__name__
                if raw:
                    micro = floor((ts - sec_f) * 1e6)
                    stamp = prefix + dot3[micro // 1000] + d3[micro % 1000]
                    calls.extend((stamp, kind, name, method, 0, ms, exc_name, pid))
                if wait is not None:  # publish to start: a row of its own kind, same time
                    wms = wait * 1000.0
                    if raw:
                        calls.extend((stamp, KIND_TASK_WAIT, name, "", 0, wms, None, pid))
                    _roll(rollups, (minute, KIND_TASK_WAIT, name, "", 0), wms)
            else:
                if kind == KIND_PROFILE:  # its route through the requests' guard; its pid
                    name = s[2] if s[2] in seen_http else guard(KIND_HTTP, s[2])
                    s = (kind, s[1], name, s[3], s[4], s[5], pid)
                batch.other.setdefault(kind, []).append(s)
                continue
            # the minute rollup and its latency bucket
            key = (minute, kind, name, method, status)
            r = rollups.get(key)
            if r is None:
                # [8] and [9]: request / response size buckets, removed below
                r = rollups[key] = [0, 0, 0.0, 0.0, 0.0, 0, 0, {}, {}, {}]
            r[0] += 1
            r[1] += err
            r[2] += ms
            if ms > r[3]:
                r[3] = ms
            r[4] += ttfb_sum
            r[5] += qb
            r[6] += rb
            b = _MIN_INDEX if ms <= 0.0009765625 else floor(log2(ms) * PER_DOUBLING)
            hist = r[7]
            hist[b] = hist.get(b, 0) + 1
            # exceptions by type; request/response size buckets for HTTP and client calls
            if exc_name is not None:
                ekey: tuple[Any, ...] = (kind, name, method, exc_name)
                excs[ekey] = excs.get(ekey, 0) + 1
            if extras:
                b = (qb - 1).bit_length() if qb and qb > 1 else 0
                hist = r[8]
                hist[b] = hist.get(b, 0) + 1
                b = (rb - 1).bit_length() if rb and rb > 1 else 0
                hist = r[9]
                hist[b] = hist.get(b, 0) + 1
        clock._sec, clock._prefix = sec, prefix
        sizes = acc.sizes
        for (_, kind, name, method, _), r in rollups.items():
            for family, counts in (("request_size", r.pop(8)), ("response_size", r.pop())):
                for b, c in counts.items():
                    skey = (family, kind, name, method, b)
                    sizes[skey] = sizes.get(skey, 0) + c
        acc.samples += n
        if errors:
            batch.error_groups = grouper.take()
        return batch


def _roll(rollups: dict[tuple[Any, ...], list[Any]], key: tuple[Any, ...], ms: float) -> None:
    """Count one error-free ``ms`` into the rollup at ``key`` (the main loop inlines this)."""
    r = rollups.get(key)
    if r is None:
        r = rollups[key] = [0, 0, 0.0, 0.0, 0.0, 0, 0, {}, {}, {}]
    r[0] += 1
    r[2] += ms
    if ms > r[3]:
        r[3] = ms
    b = _MIN_INDEX if ms <= 0.0009765625 else math.floor(_log2(ms) * PER_DOUBLING)
    hist = r[7]
    hist[b] = hist.get(b, 0) + 1


def _trace_id(traceparent: Any) -> str | None:
    """The trace id in a ``traceparent`` (text or bytes), as exemplars store it."""
    if not traceparent:
        return None
    if traceparent.__class__ is bytes:
        traceparent = traceparent.decode("ascii")
    return str(traceparent[3:35])


def _status_code(line: str) -> int:
    try:
        return int(line[:3])
    except ValueError:
        return 0
