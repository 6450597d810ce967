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
from dataclasses import dataclass, field
from typing import Any

from ._buffer import KIND_CALL, KIND_CLIENT, KIND_HTTP
from ._histogram import PER_DOUBLING

__all__ = ["OVERFLOW", "UNMATCHED", "Aggregator", "Batch", "iso_utc"]

UNMATCHED = "__unmatched__"
OVERFLOW = "__overflow__"

_log2 = math.log2
_MIN_INDEX = -10 * PER_DOUBLING


@dataclass
class Batch:
    """One flush worth of data, shaped for storage.

    ``requests`` rows: (timestamp, endpoint, method, status_code, response_time_ms,
    request_size_bytes, response_size_bytes, error_count, ttfb_ms, exception,
    client_disconnected, pid). ``calls`` rows: (timestamp, kind, name, method,
    status_code, duration_ms, exception, pid). ``rollups`` map (minute, kind,
    name, method, status) to [count, errors, sum_ms, max_ms, sum_ttfb_ms,
    request_bytes, response_bytes, {bucket: count}]. ``other`` carries samples of
    kinds this module does not aggregate (system readings, log records), by kind.
    """

    requests: list[tuple[Any, ...]] = field(default_factory=list)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    rollups: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    other: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    samples: int = 0

    def __len__(self) -> int:
        return self.samples


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


def iso_utc(ts: float) -> str:
    """Seconds since the epoch as the ISO 8601 UTC text the tables store."""
    sec = int(ts)
    micro = int((ts - sec) * 1e6)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{micro:06d}"


class Aggregator:
    """Stateful across batches only for the cardinality guard and the clock."""

    def __init__(self, max_routes: int = 1000, raw_rows: bool = True) -> None:
        self.max_routes = max_routes
        self.raw_rows = raw_rows
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

    def aggregate(self, samples: Iterable[tuple[Any, ...]]) -> Batch:
        batch = Batch()
        clock = self._clock
        clock.refresh()
        offset = clock.offset
        iso = clock.iso
        guard = self._guard
        rollups = batch.rollups
        requests = batch.requests
        calls = batch.calls
        raw = self.raw_rows
        pid = self.pid
        n = 0
        for s in samples:
            n += 1
            kind = s[0]
            if kind == KIND_HTTP:
                # ("http", t0, t_end, t_first, route, method, status, req_b, resp_b, exc, disc)
                _, t0, t1, tf, route, method, status, qb, rb, exc, disc = s
                if status.__class__ is str:  # WSGI status line, parsed here not on the request path
                    status = _status_code(status)
                name = guard(kind, route if route is not None else UNMATCHED)
                ms = (t1 - t0) * 1000.0
                ttfb = (tf - t0) * 1000.0 if tf else None
                exc_name = exc.__name__ if exc is not None else None
                err = 1 if (status >= 500 or exc is not None) else 0
                ts = t0 + offset
                if raw:
                    requests.append((iso(ts), name, method, status, ms, qb, rb, err, ttfb,
                                     exc_name, 1 if disc else 0, pid))
                _roll(rollups, int(ts // 60) * 60, kind, name, method, status, ms, err,
                      ttfb or 0.0, qb, rb)
            elif kind == KIND_CALL or kind == KIND_CLIENT:
                # ("call", t0, t_end, name, exc) / ("client", t0, t_end, name, method, status, qb, rb, exc)
                if kind == KIND_CALL:
                    _, t0, t1, name, exc = s
                    method, status, qb, rb = "", 0, 0, 0
                else:
                    _, t0, t1, name, method, status, qb, rb, exc = s
                name = guard(kind, name)
                ms = (t1 - t0) * 1000.0
                exc_name = exc.__name__ if exc is not None else None
                err = 1 if (exc is not None or status >= 500) else 0
                ts = t0 + offset
                if raw:
                    calls.append((iso(ts), kind, name, method, status, ms, exc_name, pid))
                _roll(rollups, int(ts // 60) * 60, kind, name, method, status, ms, err, 0.0,
                      qb, rb)
            else:
                batch.other.setdefault(kind, []).append(s)
        batch.samples = n
        return batch


def _status_code(line: str) -> int:
    try:
        return int(line[:3])
    except ValueError:
        return 0


def _roll(rollups: dict[tuple[Any, ...], list[Any]], minute: int, kind: str, name: str,
          method: str, status: int, ms: float, err: int, ttfb: float, qb: int, rb: int) -> None:
    key = (minute, kind, name, method, status)
    r = rollups.get(key)
    if r is None:
        r = rollups[key] = [0, 0, 0.0, 0.0, 0.0, 0, 0, {}]
    r[0] += 1
    r[1] += err
    r[2] += ms
    if ms > r[3]:
        r[3] = ms
    r[4] += ttfb
    r[5] += qb
    r[6] += rb
    b = _MIN_INDEX if ms <= 0.0009765625 else math.floor(_log2(ms) * PER_DOUBLING)
    hist = r[7]
    hist[b] = hist.get(b, 0) + 1
