"""The request path's only contact with the kit: a bounded, lock-free sample buffer.

``Recorder.add`` is the single call an adapter makes per request. It does a
length check and one ``deque.append`` (atomic under the GIL), and sets the
flusher's wake-up Event only on the one append that crosses the high-water
mark, so a request never takes a lock or waits. When the buffer is full the new
sample is dropped and counted with ``itertools.count`` (its ``__next__`` is a
single C call, so concurrent drops are never lost from the count).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["KIND_CALL", "KIND_CLIENT", "KIND_HTTP", "Recorder"]

#: Sample kinds: the first element of every sample tuple.
KIND_HTTP = "http"
KIND_CALL = "call"
KIND_CLIENT = "client"


def _noop() -> None:
    return None


def _value(counter: itertools.count[int]) -> int:
    # repr is "count(N)": the only way to read the counter without advancing it.
    return int(repr(counter)[6:-1])


class Recorder:
    """Bounded FIFO of sample tuples shared by every adapter of a process."""

    __slots__ = ("_base", "buf", "cap", "drops", "enabled", "ended", "high", "started", "wake")

    def __init__(self, capacity: int = 32768) -> None:
        self.buf: deque[tuple[Any, ...]] = deque()
        self.cap = capacity
        self.high = max(1, capacity // 2)
        self.wake: Callable[[], None] = _noop
        self.enabled = True
        self.drops = itertools.count()  # adapters that inline add() count here too
        # HTTP requests begun and ended (recorded or dropped), counted by the adapters: the
        # difference is the in-flight gauge. Never replaced (adapters bind them at import).
        self.started = itertools.count()
        self.ended = itertools.count()
        self._base = 0

    def add(self, sample: tuple[Any, ...]) -> None:
        """Append one sample, or count it as dropped when the buffer is full."""
        buf = self.buf
        n = len(buf)
        if n < self.cap:
            buf.append(sample)
            if n == self.high:
                self.wake()
        else:
            next(self.drops)

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
        self.cap = capacity
        self.high = max(1, capacity // 2)

    def drain(self, limit: int) -> list[tuple[Any, ...]]:
        """Pop up to ``limit`` samples in arrival order (flusher thread only)."""
        buf = self.buf
        out: list[tuple[Any, ...]] = []
        pop = buf.popleft
        append = out.append
        try:
            for _ in range(min(limit, len(buf))):
                append(pop())
        except IndexError:
            pass
        return out

    def reset_after_fork(self) -> None:
        """Forget the parent's samples: the parent flushes them, not the child."""
        self.buf.clear()
        self.wake = _noop
        self._base = _value(self.started) - _value(self.ended)  # the parent's, not ours
