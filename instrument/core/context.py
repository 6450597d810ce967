"""The current request in one ContextVar, plus cheap request id minting.

The adapters set ``current`` once per request to their own per-request object
(no tuple is built for it); the log formatter, the log handler and the
``requests`` integration call :func:`describe` on it lazily, because at request
start the app has not routed yet. Every such object has a ``describe()`` method
returning ``(request_id, method, route template or path)``.

A fresh id is a random per-process prefix plus a counter (no ``uuid4``, no
system call per request): ``os.urandom`` runs once per process and again in a
forked child, so ids stay unique across gunicorn workers and restarts.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from contextvars import ContextVar
from typing import Any

__all__ = [
    "COUNTER",
    "IDS",
    "MAX_ID_LENGTH",
    "PREFIX",
    "READERS",
    "REQUEST_ID_HEADER",
    "Manual",
    "current",
    "describe",
    "incoming_id",
    "new_id",
    "route_of",
    "top_up",
    "traceparent_of",
    "tracestate_of",
    "valid_id",
]

#: Header carrying the id in both directions (WSGI: ``HTTP_X_REQUEST_ID``).
REQUEST_ID_HEADER = "X-Request-ID"
#: Longest incoming id accepted; anything longer is replaced by a fresh one.
MAX_ID_LENGTH = 128

# Letters, digits and the punctuation that ids from common proxies and tracers use
# (uuid, base64, "Root=1-..." from AWS). No spaces, quotes, control characters or CR/LF,
# so an echoed id can never split a header or inject into a log line.
_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:+/=@-"

#: The per-request object of the request being handled (see :func:`describe`), or None.
current: ContextVar[Any] = ContextVar("instrument_request", default=None)
#: ``[True]`` once a module that reads :data:`current` is imported (``instrument.logs``,
#: ``instrument.requests``). Until then the adapters skip setting it (a third of what a
#: request id costs), since nothing in the process could observe it; they still mint
#: and echo the id. A reader imported in the middle of a request sees the next one.
READERS = [False]

#: ``[prefix]``: the per-process part of fresh ids, replaced in a forked child. A list, so
#: the adapters can import it once and still see the child's prefix; the counter carries on.
PREFIX = [""]
COUNTER = itertools.count(1)
#: Fresh ids minted ahead by the flusher thread (:func:`top_up`): a request pops one
#: (``IDS.popleft``, atomic) and formats nothing; it mints its own only when this runs dry.
IDS: deque[str] = deque()
_AHEAD = 4096


def _reseed() -> None:
    IDS.clear()  # the parent's prefix: a child must not hand out the same ids
    PREFIX[0] = os.urandom(6).hex() + "-"


def top_up() -> None:
    """Mint ids ahead of need (flusher thread), so string formatting stays off requests."""
    want = _AHEAD - len(IDS)
    if want > _AHEAD // 4:
        prefix, counter = PREFIX[0], COUNTER
        IDS.extend([prefix + str(next(counter)) for _ in range(want)])


_reseed()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """A fresh id, e.g. ``'9c0f3ab2e1d4-26'``: unique per process, cheap to make."""
    try:
        return IDS.popleft()
    except IndexError:
        return PREFIX[0] + str(next(COUNTER))


def valid_id(raw: str | bytes) -> bool:
    """True when ``raw`` is 1..128 characters from the safe set."""
    if isinstance(raw, str):
        if not raw.isascii():
            return False
        raw = raw.encode("ascii")
    return 0 < len(raw) <= MAX_ID_LENGTH and not raw.translate(None, _SAFE)


def incoming_id(raw: str | bytes | None) -> str:
    """The caller's id when it is valid, else a fresh one (the header value is untrusted)."""
    if raw:
        if raw.__class__ is bytes:  # ASGI header value
            if len(raw) <= MAX_ID_LENGTH and not raw.translate(None, _SAFE):
                return raw.decode("ascii")
        elif valid_id(raw):
            return raw  # type: ignore[return-value]
    return new_id()


class Manual:
    """The context :func:`instrument.logs.request_context` gives work outside a request."""

    __slots__ = ("method", "rid", "route", "state", "tp")

    def __init__(self, rid: str, method: str, route: str, tp: str | None = None,
                 state: str | None = None) -> None:
        self.rid = rid
        self.method = method
        self.route = route
        self.tp = tp
        self.state = state

    def describe(self) -> tuple[str, str, str]:
        return self.rid, self.method, self.route

    def traceparent(self) -> str | None:
        return self.tp

    def tracestate(self) -> str | None:
        return self.state


def describe(ctx: Any) -> tuple[str, str, str]:
    """``(request_id, method, route template or path)`` of a context object."""
    rid, method, route = ctx.describe()
    return rid, method or "", route or ""


def traceparent_of(ctx: Any) -> str | None:
    """The ``traceparent`` of a context's own span (its trace and span id), or None."""
    get = getattr(ctx, "traceparent", None)
    return get() if get is not None else None


def tracestate_of(ctx: Any) -> str | None:
    """The ``tracestate`` a context carries on from its caller, or None."""
    get = getattr(ctx, "tracestate", None)
    return get() if get is not None else None


def route_of(scope: Any) -> str:
    """The ASGI route template once the app has routed, else the raw path."""
    obj = scope.get("route")  # Starlette/FastAPI leave the matched route here
    fastapi = scope.get("fastapi")  # FastAPI's route with include_router prefixes
    if obj is not None and fastapi:
        obj = fastapi.get("effective_route_context") or obj
    if obj is not None:
        template = getattr(obj, "path_format", None) or getattr(obj, "path", None)
        if isinstance(template, str) and template:
            return template
    # Litestar's router leaves the template here; the Falcon adapter, under "instrument.route"
    template = scope.get("path_template") or scope.get("instrument.route")
    if isinstance(template, str) and template:
        return template
    return str(scope.get("path", ""))
