"""The request a log record belongs to: read from the adapters' context, or stamped on it.

Importing this module is what tells the adapters that something reads the
request context (``READERS``): from then on each request is made current.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from instrument.core import trace
from instrument.core.context import (
    READERS,
    Manual,
    current,
    describe,
    new_id,
    traceparent_of,
)
from instrument.core.runtime import runtime

__all__ = ["BASE_LEN", "CTX_ATTR", "RESERVED", "TRACE_ATTR", "ContextFilter", "context_of",
           "extras_of", "get_request_id", "get_traceparent", "request_context", "trace_of"]

READERS[0] = True  # the adapters make each request current from now on

CTX_ATTR = "instrument_ctx"
TRACE_ATTR = "instrument_trace"
NO_CTX = object()
BASE = logging.LogRecord("", 0, "", 0, "", (), None).__dict__
BASE_LEN = len(BASE)  # a record with no extra= fields has at most this many + message, asctime
STANDARD = frozenset(BASE) | {"message", "asctime", "taskName", CTX_ATTR, TRACE_ATTR}
RESERVED = frozenset({"timestamp", "level", "logger", "message", "request_id", "method",
                       "route", "trace_id", "span_id", "exception", "stack"})


def context_of(record: logging.LogRecord) -> tuple[str, str, str] | None:
    """``(request_id, method, route)`` of the request that logged, or None."""
    ctx = record.__dict__.get(CTX_ATTR, NO_CTX)
    if ctx is NO_CTX:
        ctx = current.get()
    if ctx is None or ctx.__class__ is tuple:  # stamped by ContextFilter: already described
        return ctx
    return describe(ctx)


def trace_of(record: logging.LogRecord) -> str | None:
    """The ``traceparent`` of the span that logged (its trace and span ids), or None."""
    tp = record.__dict__.get(TRACE_ATTR, NO_CTX)
    if tp is NO_CTX:
        ctx = current.get()
        return traceparent_of(ctx) if ctx is not None else None
    return tp


def extras_of(record: logging.LogRecord) -> dict[str, Any] | None:
    d = record.__dict__
    if len(d) <= BASE_LEN:
        return None
    keys = d.keys() - STANDARD
    if not keys:
        return None
    return {k: v for k, v in d.items() if k in keys and not k.startswith("_")} or None


def get_request_id() -> str | None:
    """The id of the request being handled in this context, or None."""
    ctx = current.get()
    return describe(ctx)[0] if ctx is not None else None


def get_traceparent() -> str | None:
    """The ``traceparent`` of the request (or job) being handled in this context, or None."""
    ctx = current.get()
    return traceparent_of(ctx) if ctx is not None else None


@contextmanager
def request_context(request_id: str | None = None, *, route: str = "", method: str = "",
                    traceparent: str | None = None,
                    tracestate: str | None = None) -> Iterator[str]:
    """Give work outside a request (a job, a consumer) an id its log lines carry.

    ``traceparent`` (from the message that started the work) is continued with a
    fresh span id when valid; otherwise the work starts a trace of its own. Its trace
    id is the work's id when no ``request_id`` is given, as for a request.
    """
    settings = runtime.settings
    if settings is not None and not settings.trace_context:
        tp = state = None
        rid = request_id or new_id()
    elif (parsed := trace.parse(traceparent)) is None:
        tp, state = trace.fresh(), None
        rid = request_id or new_id()
    else:
        tp = trace.child_of(parsed[0], parsed[2])
        state = trace.tracestate(tracestate)
        rid = request_id or parsed[0]
    token = current.set(Manual(rid, method, route, tp, state))
    try:
        yield rid
    finally:
        current.reset(token)


class ContextFilter(logging.Filter):
    """Stamps the request context on the record, for handlers that format in another thread.

    Add it to a ``QueueHandler`` so the listener thread's formatter still sees the
    id of the request that logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current.get()
        d = record.__dict__
        d[CTX_ATTR] = describe(ctx) if ctx is not None else None
        d[TRACE_ATTR] = traceparent_of(ctx) if ctx is not None else None
        return True
