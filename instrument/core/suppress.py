"""A flag the kit's own I/O runs under, so that it is never recorded as the app's."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["is_suppressed", "suppressed"]

suppressed: ContextVar[bool] = ContextVar("instrument_suppressed", default=False)


def is_suppressed() -> bool:
    return suppressed.get()
