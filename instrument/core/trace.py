"""W3C trace context (``traceparent``, ``tracestate``) at the kit's cost, not a tracer's.

Every request handled by an adapter is a span: it continues the trace of a valid
incoming ``traceparent`` (same trace id and flags, a fresh span id) or starts a
trace, and the response says which with its own ``traceparent``. No span is
recorded or exported; the ids tie log lines, outgoing calls and stored requests
to the trace the caller's tracer (or the next service) sees.

A fresh ``traceparent`` is random (``os.urandom``), minted ahead by the flusher
thread like request ids (:func:`top_up`), so a request without an incoming header
pops one string and formats nothing. An incoming header is checked strictly
(version, lengths, lowercase hex, dashes, ids not all zeros, version ``ff``
refused; a later version is read as 00 and its extra fields dropped) and a bad one
is ignored: the request starts a trace of its own, as the specification asks.
Minted values are cleared in a forked child, which then mints its own.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable

__all__ = [
    "SPANS",
    "SPAN_CHUNKS",
    "TRACEPARENT",
    "TRACES",
    "TRACESTATE",
    "TRACE_BINDING",
    "child_of",
    "continue_bytes",
    "continue_str",
    "continued",
    "continued_bytes",
    "fast_continued",
    "fast_continued_bytes",
    "fresh",
    "parse",
    "span_chunk",
    "top_up",
    "tracestate",
    "use",
]

#: Header names (WSGI: ``HTTP_TRACEPARENT``; ASGI: lowercase bytes).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# version 00: exactly four fields; a later version may carry more after a dash.
_V00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_LATER = re.compile(r"(?!ff)([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?",
                    re.DOTALL)
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_MAX_TRACESTATE = 512  # the specification's minimum to propagate; longer is dropped whole

#: Fresh ``traceparent`` values (a new trace) and span ids (``"-" + 16 hex``) minted
#: ahead; both are filled once an adapter exists (:func:`use`).
TRACES: deque[str] = deque()
SPANS: deque[str] = deque()
#: Span ids for the compiled modules (core/_traceparent.h), minted ahead in chunks: bytes of
#: random hex, 16 digits a span id, so a request copies 16 bytes and calls nothing.
SPAN_CHUNKS: deque[bytes] = deque()
_CHUNK = 256  # span ids a chunk
_CHUNKS_AHEAD = 16  # 4,096 span ids a second (top_up) before a request mints a chunk
# every lowercase hex digit becomes "x", a dash stays, anything else "?": a valid version-00
# value translates to exactly _SHAPE
_SHAPE_TABLE = bytes(120 if chr(i) in "0123456789abcdef" else 45 if i == 45 else 63
                     for i in range(256))
_SHAPE = b"xx-" + b"x" * 32 + b"-" + b"x" * 16 + b"-xx"
_ZERO_SPAN_DASHED = "-" + "0" * 16 + "-"
_ZERO_TRACE_B = b"0" * 32
_ZERO_SPAN_DASHED_B = _ZERO_SPAN_DASHED.encode()
_used = [False]
_AHEAD = 2048


def parse(value: str | bytes | None) -> tuple[str, str, str] | None:
    """``(trace_id, parent_span_id, flags)`` of a valid ``traceparent``, else None."""
    if not value:
        return None
    if value.__class__ is not str:  # an ASGI header value; anything else is not a header
        try:
            value = bytes(value).decode("ascii")  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
    if len(value) > 512:
        return None
    m = _V00.fullmatch(value)
    if m is not None:
        trace, span, flags = m.groups()
    else:
        m = _LATER.fullmatch(value)
        if m is None or m.group(1) == "00":
            return None
        trace, span, flags = m.group(2), m.group(3), m.group(4)
    if trace == _ZERO_TRACE or span == _ZERO_SPAN:
        return None
    return trace, span, flags


def _span() -> str:
    while True:
        span = os.urandom(8).hex()
        if span != _ZERO_SPAN:
            return span


def _trace() -> str:
    while True:
        trace = os.urandom(16).hex()
        if trace != _ZERO_TRACE:
            return trace


def fresh() -> str:
    """A ``traceparent`` starting a new trace (sampled): for a request that came without one."""
    try:
        return TRACES.popleft()
    except IndexError:  # none minted ahead (yet)
        return "00-" + _trace() + "-" + _span() + "-01"


def _next_span() -> str:
    try:
        return SPANS.popleft()
    except IndexError:
        return "-" + _span()


def span_chunk() -> bytes:
    """A chunk of span ids for a compiled module: one minted ahead, else one minted now."""
    try:
        return SPAN_CHUNKS.popleft()
    except IndexError:
        return os.urandom(8 * _CHUNK).hex().encode()


def child_of(trace_id: str, flags: str) -> str:
    """A ``traceparent`` in trace ``trace_id`` with a fresh span id (an outgoing call's)."""
    return "00-" + trace_id + _next_span() + "-" + flags


def continued(value: str) -> tuple[str, str | None]:
    """This request's ``traceparent`` and the caller's trace id (None: a new trace began).

    The caller's trace continues with a fresh span id when ``value`` is valid; else a
    new trace starts. Version 00 of the exact length is checked by one ``translate``
    to its shape (no regex, no match object); anything else goes through :func:`parse`.
    """
    if len(value) == 55 and value[0] == value[1] == "0":
        try:
            shape = value.encode().translate(_SHAPE_TABLE)
        except UnicodeEncodeError:  # a lone surrogate: not a header value
            shape = b""
        if shape == _SHAPE:
            trace = value[3:35]
            if trace != _ZERO_TRACE and value[35:53] != _ZERO_SPAN_DASHED:
                return "00-" + trace + _next_span() + value[52:], trace
            return fresh(), None
    parsed = parse(value)
    if parsed is None:
        return fresh(), None
    return "00-" + parsed[0] + _next_span() + "-" + parsed[2], parsed[0]


def continue_str(value: str) -> str:
    """This request's ``traceparent``: the caller's trace with a fresh span, or a new trace."""
    return continued(value)[0]


def continued_bytes(value: bytes) -> tuple[bytes, str | None]:
    """:func:`continued` for an ASGI header value, checked as bytes (no decoding first)."""
    if (value.__class__ is bytes and len(value) == 55 and value[0] == value[1] == 48
            and value.translate(_SHAPE_TABLE) == _SHAPE):
        trace = value[3:35]
        if trace != _ZERO_TRACE_B and value[35:53] != _ZERO_SPAN_DASHED_B:
            return b"00-" + trace + _next_span().encode() + value[52:], trace.decode()
        return fresh().encode(), None
    try:
        text = bytes(value).decode("ascii")
    except (TypeError, ValueError):
        return fresh().encode(), None
    tp, caller = continued(text)
    return tp.encode(), caller


def continue_bytes(value: bytes) -> bytes:
    """:func:`continue_str` for an ASGI header value."""
    return continued_bytes(value)[0]


def tracestate(value: str | bytes | None) -> str | None:
    """The incoming ``tracestate`` to pass on, or None when absent, too long or not text."""
    if not value:
        return None
    if value.__class__ is not str:
        try:
            value = bytes(value).decode("ascii")  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
    if not value.isascii() or len(value) > _MAX_TRACESTATE or "\r" in value or "\n" in value:
        return None
    return value


#: What a compiled module continuing a traceparent calls (its ``bind_trace``): a chunk of
#: span ids, a fresh traceparent (see core/_traceparent.h).
TRACE_BINDING = (span_chunk, fresh)

fast_continued: Callable[[str], tuple[str, str | None]]
fast_continued_bytes: Callable[[bytes], tuple[bytes, str | None]]
try:
    from instrument.core import _trace as _compiled
except ImportError:  # not compiled at install (no C compiler): the functions above
    fast_continued, fast_continued_bytes = continued, continued_bytes
else:
    # The same answers (they hand anything but a 55-character version-00 value to the
    # functions above): about a tenth of the instructions on the usual header.
    _compiled.bind(*TRACE_BINDING, continued, continued_bytes)
    fast_continued, fast_continued_bytes = _compiled.continued, _compiled.continued_bytes


def _mint(n: int) -> list[str]:
    raw = os.urandom(24 * n).hex()
    out = []
    for i in range(0, 48 * n, 48):
        trace, span = raw[i:i + 32], raw[i + 32:i + 48]
        if trace != _ZERO_TRACE and span != _ZERO_SPAN:
            out.append("00-" + trace + "-" + span + "-01")
    return out


def top_up() -> None:
    """Mint trace and span ids ahead of need (flusher thread), once an adapter exists."""
    if not _used[0]:
        return
    want = _AHEAD - len(TRACES)
    if want > _AHEAD // 4:
        TRACES.extend(_mint(want))
    want = _AHEAD - len(SPANS)
    if want > _AHEAD // 4:
        SPANS.extend([v[35:52] for v in _mint(want)])
    want = _CHUNKS_AHEAD - len(SPAN_CHUNKS)
    if want > 0:  # the all-zero id a chunk may hold is skipped where it is read
        SPAN_CHUNKS.extend([os.urandom(8 * _CHUNK).hex().encode() for _ in range(want)])


def use() -> None:
    """An adapter exists: mint ids ahead from now on (and now)."""
    _used[0] = True
    top_up()


def _reseed() -> None:
    TRACES.clear()  # the parent's: a child must never hand out the same trace ids
    SPANS.clear()
    SPAN_CHUNKS.clear()  # (the compiled modules drop the chunk in hand themselves)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)
