"""The current request (id, method, route) in one ContextVar, plus cheap request id minting.

The adapters call :func:`incoming_id` / :func:`new_id` and ``current.set(...)``
once per request; everything else (the log formatter, the log handler, the
``requests`` integration) reads ``current.get()`` lazily. The context is one
tuple ``(request_id, method, path, holder)`` where ``holder`` is the WSGI
environ or ASGI scope: the route template is looked up from it only when a log
line asks, because at request start the app has not routed yet.

A fresh id is a random per-process prefix plus a counter (no ``uuid4``, no
system call per request): ``os.urandom`` runs once per process and again in a
forked child, so ids stay unique across gunicorn workers and restarts.
"""

from __future__ import annotations

import itertools
import os
from contextvars import ContextVar, Token
from typing import Any

__all__ = [
    "MAX_ID_LENGTH",
    "REQUEST_ID_HEADER",
    "asgi_enter",
    "current",
    "incoming_id",
    "leave",
    "new_id",
    "route_of",
    "valid_id",
    "wsgi_enter",
]

#: Header carrying the id in both directions (WSGI: ``HTTP_X_REQUEST_ID``).
REQUEST_ID_HEADER = "X-Request-ID"
#: Longest incoming id accepted; anything longer is replaced by a fresh one.
MAX_ID_LENGTH = 128

# Letters, digits and the punctuation that ids from common proxies and tracers use
# (uuid, base64, "Root=1-..." from AWS). No spaces, quotes, control characters or CR/LF,
# so an echoed id can never split a header or inject into a log line.
_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:+/=@-"

#: ``(request_id, method, path, holder)`` of the request being handled, or None.
current: ContextVar[tuple[str, str, str, Any] | None] = ContextVar(
    "instrument_request", default=None)

_set = current.set
_prefix = ""
_counter = itertools.count(1)


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(6).hex() + "-"
    _counter = itertools.count(1)


_reseed()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """A fresh id, e.g. ``'9c0f3ab2e1d4-26'``: unique per process, cheap to make."""
    return _prefix + str(next(_counter))


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
    return _prefix + str(next(_counter))


def wsgi_enter(environ: dict[str, Any]) -> tuple[str, Token[Any]]:
    """Make this WSGI request current: its id (the caller's if valid) and the reset token."""
    raw = environ.get("HTTP_X_REQUEST_ID")
    rid = incoming_id(raw) if raw else _prefix + str(next(_counter))
    return rid, _set((rid, environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""),
                      environ))


def asgi_enter(scope: Any) -> tuple[bytes, Token[Any]]:
    """Make this ASGI request current: its id as header bytes and the reset token."""
    raw = None
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            raw = value
            break
    rid = incoming_id(raw) if raw else _prefix + str(next(_counter))
    return rid.encode("ascii"), _set((rid, scope["method"], scope["path"], scope))


def leave(token: Token[Any]) -> None:
    """End the request's context (restoring what was current before it)."""
    try:
        current.reset(token)
    except (ValueError, RuntimeError):  # closed from another context, or closed twice
        current.set(None)


def route_of(ctx: tuple[str, str, str, Any]) -> str:
    """The route template once the app has routed, else the raw path."""
    holder = ctx[3]
    if holder is not None:
        route = holder.get("instrument.route")  # WSGI: set by the Flask adapter
        if route is not None:
            return str(route)
        obj = holder.get("route")  # ASGI: Starlette/FastAPI leave the matched route here
        fastapi = holder.get("fastapi")  # FastAPI's route with include_router prefixes
        if obj is not None and fastapi:
            obj = fastapi.get("effective_route_context") or obj
        if obj is not None:
            template = getattr(obj, "path_format", None) or getattr(obj, "path", None)
            if isinstance(template, str) and template:
                return template
    return ctx[2]
