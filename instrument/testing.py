"""Test doubles the kit's own tests use, shipped so that users' tests can use them too."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from instrument.core.batch import Batch

__all__ = ["FailingBackend", "MemoryBackend", "capture_samples"]


class MemoryBackend:
    """Keeps every batch in memory; rows are the same tuples SQLite receives."""

    name = "memory"

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.closed = False
        self.written = threading.Event()

    def write(self, batch: Batch) -> None:
        self.batches.append(batch)
        self.written.set()

    def close(self) -> None:
        self.closed = True

    @property
    def requests(self) -> list[dict[str, Any]]:
        keys = ("timestamp", "endpoint", "method", "status_code", "response_time_ms",
                "request_size_bytes", "response_size_bytes", "error_count", "ttfb_ms",
                "exception", "client_disconnected", "pid")
        return [dict(zip(keys, row, strict=True)) for b in self.batches for row in b.requests]

    @property
    def calls(self) -> list[dict[str, Any]]:
        keys = ("timestamp", "kind", "name", "method", "status_code", "duration_ms",
                "exception", "pid")
        return [dict(zip(keys, row, strict=True)) for b in self.batches for row in b.calls]

    def get_sample_value(self, kind: str, name: str, field: str = "count") -> float:
        """Sum of one rollup field over every batch, e.g. ('http', '/items/{id}', 'count')."""
        index = {"count": 0, "errors": 1, "sum_ms": 2, "request_bytes": 5,
                 "response_bytes": 6}[field]
        return sum(v[index] for b in self.batches for k, v in b.rollups.items()
                   if k[1] == kind and k[2] == name)

    def clear(self) -> None:
        self.batches.clear()


class FailingBackend(MemoryBackend):
    """Raises on the first ``failures`` writes, then behaves like MemoryBackend."""

    name = "failing"

    def __init__(self, failures: int = 1, error: type[Exception] = OSError) -> None:
        super().__init__()
        self.failures = failures
        self.error = error
        self.attempts = 0

    def write(self, batch: Batch) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error(f"injected failure {self.attempts}")
        super().write(batch)


@contextmanager
def capture_samples(**options: Any) -> Iterator[MemoryBackend]:
    """Run the block with an in-memory backend; flushed when the block ends."""
    from instrument.core.runtime import runtime

    backend = MemoryBackend()
    runtime.configure(backends=[backend], **options)
    try:
        yield backend
    finally:
        runtime.flush(5.0)
