"""Type aliases and Protocols shared across the kit; nothing here runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ASGIApp",
    "Backend",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "StartResponse",
    "WSGIApp",
    "WSGIEnviron",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]


@runtime_checkable
class Backend(Protocol):
    """Where the flusher sends aggregated batches.

    ``write`` may raise: the flusher keeps the batch, retries it with backoff and
    reports the error in health. It is only ever called from the flusher thread,
    so implementations need no locking of their own.
    """

    name: str

    def write(self, batch: Any) -> None: ...

    def close(self) -> None: ...
