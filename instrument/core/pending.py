"""A backend as the flusher sees it: its queue of pending batches and its recent failures.

Each backend has its own queue, so one that fails is retried with backoff while
the others carry on; what it last said is kept for health (``instrument.stats()``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from instrument.core.batch import Batch

__all__ = ["BackendState"]


class BackendState:
    """A backend with its pending batches and its recent failures."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.name: str = getattr(backend, "name", type(backend).__name__)
        self.pending: deque[Batch] = deque()
        self.failures = 0  # consecutive
        self.errors_total = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_success_at: float | None = None
        self.retry_at = 0.0
        self.samples_written = 0
        self.samples_lost = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "healthy": self.failures == 0,
            "pending_batches": len(self.pending),
            "consecutive_failures": self.failures,
            "errors_total": self.errors_total,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_success_at": self.last_success_at,
            "samples_written": self.samples_written,
            "samples_lost": self.samples_lost,
        }
