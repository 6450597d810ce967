"""The request path's only contact with the kit: a bounded, lock-free sample buffer.

A sample goes in with one ``deque`` call, atomic under the GIL, after a length
check; the flusher's wake-up Event is set only by the samples that cross the
high-water mark, so a request never takes a lock or waits. When the buffer is
full the new sample is dropped and counted with ``itertools.count`` (its
``__next__`` is a single C call, so concurrent drops are never lost).

The hot producers (the middlewares, ``@timed``) store a sample *flat*:
``buf.extend(sample)`` puts its fields in the deque one by one, with no Python
code in between, so records stay whole and in order. The tuple they built is
freed at once and the fields (numbers, strings) are not objects Python's
garbage collector tracks, so a buffered request leaves nothing for it to
count: appending tuples would make every ~700 requests trigger a collection
(and, in a large app, the occasional full one) that the bare app never has.
Other producers append one tuple; :meth:`Recorder.drain` rebuilds both kinds
into tuples for the flusher. Capacity counts slots: a request takes
:data:`SLOTS`, so ``capacity`` requests fit.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from itertools import repeat, starmap
from typing import Any

__all__ = ["FLAT_FIELDS", "KIND_CALL", "KIND_CLIENT", "KIND_HTTP", "KIND_PROFILE", "KIND_TASK",
           "KIND_TASK_WAIT", "SLOTS", "Recorder"]

#: Sample kinds: the first element of every sample tuple.
KIND_HTTP = "http"
KIND_CALL = "call"
KIND_CLIENT = "client"
#: A Celery task run: ``("task", t0, t_end, name, outcome, exc, queue_wait_s | None)``.
KIND_TASK = "task"
#: Not a sample kind: the rows the aggregator derives from a task's queue wait.
KIND_TASK_WAIT = "task_wait"
#: The sampling profiler's counts: ``("profile", minute, route, method, stack, samples)``.
KIND_PROFILE = "profile"
#: Fields of the samples stored flat, by kind (the kind included).
FLAT_FIELDS = {KIND_HTTP: 11, KIND_CALL: 5, KIND_TASK: 7}
#: Slots one request takes: capacity is counted in requests.
SLOTS = 11


def _noop() -> None:
    return None


def _value(counter: itertools.count[int]) -> int:
    # repr is "count(N)": the only way to read the counter without advancing it.
    return int(repr(counter)[6:-1])


class Recorder:
    """Bounded FIFO of samples shared by every adapter of a process."""

    __slots__ = ("_base", "buf", "cap", "capacity", "drops", "enabled", "ended", "high",
                 "high_end", "started", "wake")

    def __init__(self, capacity: int = 32768) -> None:
        self.buf: deque[Any] = deque()
        self.resize(capacity)
        self.wake: Callable[[], None] = _noop
        self.enabled = True
        self.drops = itertools.count()  # adapters that inline add() count here too
        # HTTP requests begun and ended (recorded or dropped), counted by the adapters: the
        # difference is the in-flight gauge. Never replaced (adapters bind them at import).
        self.started = itertools.count()
        self.ended = itertools.count()
        self._base = 0

    def add(self, sample: tuple[Any, ...]) -> None:
        """Append one sample tuple, or count it as dropped when the buffer is full."""
        buf = self.buf
        n = len(buf)
        if n < self.high:  # below half full, the common case: one compare (high <= cap)
            buf.append(sample)
        elif n < self.cap:
            buf.append(sample)
            if n < self.high_end:  # the one append that crosses half full wakes the flusher
                self.wake()
        else:
            next(self.drops)

    def add_flat(self, sample: tuple[Any, ...]) -> None:
        """Store a sample of a :data:`FLAT_FIELDS` kind flat (what the inlined adapters do)."""
        buf = self.buf
        n = len(buf)
        if n < self.high:  # below half full, the common case: one compare (high <= cap)
            buf.extend(sample)
        elif n < self.cap:
            buf.extend(sample)
            if n < self.high_end:  # the one append that crosses half full wakes the flusher
                self.wake()
        else:
            next(self.drops)

    @property
    def buffered(self) -> int:
        """Slots in use, in requests (:data:`SLOTS` each), rounded up."""
        return -(-len(self.buf) // SLOTS)

    @property
    def dropped(self) -> int:
        """Samples dropped because the buffer was full, since the process started."""
        return _value(self.drops)

    @property
    def in_flight(self) -> int:
        """HTTP requests this process has begun and not yet ended."""
        ended = _value(self.ended)  # read first: a request ending in between never goes below 0
        return max(0, _value(self.started) - ended - self._base)

    def resize(self, capacity: int) -> None:
        """Hold ``capacity`` requests; wake the flusher when half full."""
        self.capacity = capacity
        self.cap = capacity * SLOTS
        self.high = max(1, self.cap // 2)
        # A sample adds up to SLOTS at once, so "the one that crosses the mark" is the one
        # that finds the length in [high, high + SLOTS); two may, and waking twice is harmless.
        self.high_end = self.high + SLOTS

    def drain(self, limit: int) -> list[tuple[Any, ...]]:
        """Pop about ``limit`` samples' worth in arrival order, as tuples (flusher thread only)."""
        return self.drain_slots(min(limit * SLOTS, len(self.buf)))[0]

    def drain_slots(self, count: int) -> tuple[list[tuple[Any, ...]], int]:
        """Pop ``count`` slots (at most what is buffered), and the rest of a record they cut.

        Only one thread drains at a time (the flusher's, or callers of a synchronous flush
        taking turns), so what is buffered stays there until it is popped.

        Returns the samples, as tuples in arrival order, and the slots popped.
        """
        buf = self.buf
        pop = buf.popleft
        # Only whole records are ever in the deque, so a cut record's rest is there to pop.
        # starmap calls popleft from C: half the cost of a comprehension's Python loop.
        items = list(starmap(pop, repeat((), min(count, len(buf)))))
        out: list[tuple[Any, ...]] = []
        append = out.append
        flat = FLAT_FIELDS
        i, n = 0, len(items)
        while i < n:
            item = items[i]
            if item.__class__ is tuple:
                append(item)
                i += 1
                continue
            j = i + flat[item]
            while j > n:
                items.append(pop())
                n += 1
            append(tuple(items[i:j]))
            i = j
        return out, n

    def reset_after_fork(self) -> None:
        """Forget the parent's samples: the parent flushes them, not the child."""
        self.buf.clear()
        self.wake = _noop
        self._base = _value(self.started) - _value(self.ended)  # the parent's, not ours
