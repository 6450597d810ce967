"""The in-flight gauge: HTTP requests being served in each process, stored by its flusher.

The request path only counts: the middlewares advance two counters per request
(``Recorder.in_flight`` is their difference). Once per cycle the flusher reads
that number and puts it on the batch it writes anyway. A cycle without samples
sends a batch carrying only the reading, to the backends that store it
(``stores_in_flight``), and only when the value changed or, while it is not 0,
every ``window / 3`` seconds: an idle process writes nothing at all.

The store keeps one row per process (host, pid): its latest value, when it was
read and until when readers count it, ``window`` later (three flush intervals,
at least 5 s). A scrape sums the rows still counted, so a worker killed with
SIGKILL, or one that exits without a last flush, stops counting by itself
within the window while live ones keep renewing theirs. Writers delete rows
that expired an hour ago, and readers find the live ones through an index on
the expiry, so a scrape never reads one row per worker ever started.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from instrument.core.batch import Batch, InFlight, Origin
from instrument.core.buffer import Recorder

__all__ = ["MIN_WINDOW", "Gauge", "window"]

#: Shortest time a reading is counted: a flush cycle late by a few seconds is not a death.
MIN_WINDOW = 5.0


def window(interval: float) -> float:
    """How long a reading counts for a flusher writing every ``interval`` seconds."""
    return max(MIN_WINDOW, 3.0 * interval)


class Gauge:
    """The flusher's side: one reading a cycle, sent when it changed or is due to be renewed."""

    def __init__(self, recorder: Recorder, interval: float) -> None:
        self.recorder = recorder
        self.window = window(interval)
        self.renew = self.window / 3.0  # a live nonzero row is rewritten twice before it expires
        self.sent = 0  # nothing stored yet reads as 0: a fresh idle process need not write
        self.sent_at = 0.0  # time.monotonic() of the last reading sent

    def read(self) -> InFlight:
        now = time.time()
        return InFlight(self.recorder.in_flight, os.getpid(), now, now + self.window)

    def attach(self, batch: Batch | None, states: Iterable[Any], origin: Origin) -> None:
        """Put a reading on the cycle's last ``batch``, or queue one alone when it is due.

        ``states`` are the flusher's BackendStates. A reading alone updates a queued
        reading-only batch in place rather than queueing another behind a failing
        backend (and keeps that batch's identity, which totals retries rely on).
        """
        reading = self.read()
        mono = time.monotonic()
        if batch is not None:
            batch.in_flight = reading
        elif reading.value == self.sent and (reading.value == 0
                                             or mono - self.sent_at < self.renew):
            return
        else:
            alone: Batch | None = None
            for state in states:
                if not getattr(state.backend, "stores_in_flight", False):
                    continue
                pending = state.pending
                if pending and _reading_only(pending[-1]):
                    pending[-1].in_flight = reading
                    continue
                if alone is None:
                    alone = Batch(in_flight=reading, origin=origin)
                pending.append(alone)
        self.sent, self.sent_at = reading.value, mono


def _reading_only(batch: Batch) -> bool:
    return (batch.in_flight is not None and not batch.samples and not batch.rollups
            and not batch.other and not batch.request_values and not batch.call_values)
