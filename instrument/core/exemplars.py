"""Exemplar requests: the slowest and the failing requests of each route and minute.

Counting says how slow; an exemplar says which request, so its id leads to its log
lines. The choice is the flusher's (:class:`Picker`). The request path only decides
whether a request *could* be chosen, by comparing its duration with the cut the
flusher published for its route (:data:`CUTS`: the fastest of the minute's slowest
so far, a bound that only rises within a minute), so only candidates carry their
details (request id, raw path, query string, client, user agent, trace) into the
buffer. A route the flusher has not seen enough of this minute has no cut (every
request is a candidate), and so does the last half second of every minute
(:data:`UNTIL`), so the flusher's choice is exact, not a sample of a sample.

Per (minute, route) a process keeps the ``keep`` slowest requests that did not fail
and the first ``failures`` failing ones (5xx or an exception), counting the rest.
Failures are handed over at once; the slowest once their minute is over, so a
stored row is not displaced. A flush or an exit hands over the current minute's so
far; they stay in the running, and a minute may then hold a few more rows than
``keep`` (readers take the slowest). Under gunicorn each worker picks its
own: the store holds up to ``keep`` a route a minute per worker, and readers take
the slowest of them.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Any

from instrument.core.redact import Redactor

__all__ = ["CUTS", "DEFAULT", "UNTIL", "Picker", "on"]

_OFF = float("inf")
#: The cut of a route with none published: 0.0 (every request a candidate) while exemplars
#: are chosen, infinite (none) while they are not (``INSTRUMENT_EXEMPLARS=0``, no flusher).
DEFAULT = [_OFF]
#: ``perf_counter`` time until which :data:`CUTS` hold: half a second before the end of the
#: minute they were computed in (clock offsets drift by microseconds between batches); after
#: it every request is a candidate again. Infinite while exemplars are off.
UNTIL = [_OFF]
#: Route (as the adapter names it) -> seconds: a request of the route this fast or faster,
#: not failing, cannot be among its minute's slowest. Mutated in place (adapters bind it).
CUTS: dict[Any, float] = {}

_MAX_CUTS = 4096  # raw route names with a cut: plain apps name routes by their path
_MAX_TEXT = 2048  # a raw path, query string or user agent is stored up to this length


def _text(value: Any) -> str | None:
    if value is None or value == "" or value == b"":
        return None
    if value.__class__ is not str:
        value = bytes(value).decode("latin-1")
    return value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT]


def _client(value: Any) -> str | None:
    if value is None or value.__class__ is str:
        return value or None
    try:  # ASGI: (host, port)
        return str(value[0])
    except (TypeError, IndexError):
        return None


class Picker:
    """The flusher's choice of exemplars, across batches (one per flusher)."""

    def __init__(self, keep: int = 5, failures: int = 20,
                 redactor: Redactor | None = None) -> None:
        self.keep = keep
        self.failures = failures
        self.redactor = redactor if redactor is not None else Redactor()
        self.skipped = 0  # failures beyond the cap: counted, not kept
        self._slow: dict[tuple[int, str], list[tuple[float, int, tuple[Any, ...]]]] = {}
        self._failed: dict[tuple[int, str], int] = {}
        self._raw: dict[Any, str] = {}  # raw route name -> stored name, current minute
        self._minute = 0  # the latest minute seen
        self._seq = itertools.count()
        self._sent: set[int] = set()  # rows of the current minute handed over by a flush
        # INSTRUMENT_EXEMPLARS=0 keeps none, failing ones included
        DEFAULT[0], UNTIL[0] = (0.0, 0.0) if keep > 0 else (_OFF, _OFF)
        CUTS.clear()

    def offer(self, minute: int, name: str, raw_name: Any, method: str, status: int, ms: float,
              ttfb: float | None, qb: int, rb: int, exc_name: str | None, stamp: str,
              detail: tuple[Any, ...], pid: int) -> tuple[Any, ...] | None:
        """Consider one candidate; a failing one kept is returned (to write now)."""
        if self.keep <= 0:
            return None
        if minute > self._minute:
            self._minute = minute
            self._raw.clear()
        if minute == self._minute and len(self._raw) < _MAX_CUTS:
            self._raw[raw_name] = name
        _disc, rid, path, query, client, agent, tp = detail
        failed = status >= 500 or exc_name is not None
        key = (minute, name)
        heap = None
        if failed:
            n = self._failed.get(key, 0)
            self._failed[key] = n + 1
            if n >= self.failures:
                self.skipped += 1
                return None
        else:
            heap = self._slow.get(key)
            if heap is None:
                heap = self._slow[key] = []
            elif len(heap) >= self.keep and ms <= heap[0][0]:
                return None
        if tp.__class__ is bytes:
            tp = tp.decode("ascii")
        query = _text(query)
        if query is not None and self.redactor:
            query = self.redactor.text(query)
        row = (stamp, minute, rid or None, tp[3:35] if tp else None, method, name, _text(path),
               query, status, ms, ttfb, qb, rb, _client(client), _text(agent), exc_name,
               "error" if failed else "slow", pid)
        if failed or heap is None:
            return row
        if len(heap) >= self.keep:
            self._sent.discard(heapq.heapreplace(heap, (ms, next(self._seq), row))[1])
        else:
            heapq.heappush(heap, (ms, next(self._seq), row))
        return None

    def take(self, final: bool = False) -> list[Any]:
        """The slowest rows of the minutes that are over, flat; with ``final`` (a flush, an
        exit) also the current minute's not handed over yet, which stay in the running."""
        now_minute = int(time.time() // 60) * 60
        closed = min(self._minute, now_minute)
        out: list[Any] = []
        sent = self._sent
        for key in list(self._slow):
            if key[0] < closed:
                for _ms, seq, row in sorted(self._slow.pop(key), reverse=True):
                    if seq in sent:
                        sent.discard(seq)
                    else:
                        out.extend(row)
            elif final:
                for _ms, seq, row in sorted(self._slow[key], reverse=True):
                    if seq not in sent:
                        sent.add(seq)
                        out.extend(row)
        for key in [k for k in self._failed if k[0] < closed]:
            del self._failed[key]
        return out

    def publish(self, offset: float) -> None:
        """Share the current minute's cuts with the request path (``offset``: wall - perf)."""
        keep, minute, slow = self.keep, self._minute, self._slow
        if keep <= 0:
            return
        cuts = {}
        for raw, name in self._raw.items():
            heap = slow.get((minute, name))
            if heap is not None and len(heap) >= keep > 0:
                cuts[raw] = heap[0][0] / 1000.0 * (1 - 1e-9)
        UNTIL[0] = 0.0  # while the cuts change, every request is a candidate
        CUTS.clear()
        CUTS.update(cuts)
        UNTIL[0] = minute + 59.5 - offset


def on() -> bool:
    """Whether adapters mark candidates (a flusher with ``INSTRUMENT_EXEMPLARS`` > 0 runs)."""
    return DEFAULT[0] == 0.0
