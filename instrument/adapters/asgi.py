"""Pure ASGI middleware, never ``BaseHTTPMiddleware``: ``app.add_middleware(InstrumentMiddleware)``.

The request ends when the last body chunk has been sent, so Starlette
background tasks, which run after that, do not count towards its duration.
Bytes are counted on ``receive`` and ``send`` as they flow. WebSocket and
lifespan scopes pass straight through, except that the kit flushes before the
server hears ``lifespan.shutdown.complete``.

The per-request exchange (its fields, ``send``, the request's start and its sample's
append) is compiled (``_asgi.c``) where the install had a C compiler, as it does under ``make``;
``_Exchange`` below is its reference and the fallback (``INSTRUMENT_NATIVE=false``
chooses it). tests/test_asgi_native.py holds the two to the same messages and samples.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Iterable
from operator import itemgetter
from time import perf_counter
from typing import Any

from instrument.adapters.front import front
from instrument.adapters.routes import RouteResolver
from instrument.core.buffer import KIND_HTTP
from instrument.core.context import (
    COUNTER,
    IDS,
    PREFIX,
    READERS,
    current,
    incoming_id,
    new_id,
    route_of,
)
from instrument.core.exemplars import CUTS, DEFAULT, UNTIL
from instrument.core.profiler import register, register_worker
from instrument.core.runtime import OFF, runtime
from instrument.core.trace import (
    TRACE_BINDING,
    continued_bytes,
    fast_continued_bytes,
    fresh,
    tracestate,
    use,
)
from instrument.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["EXC_KEY", "InstrumentMiddleware"]

#: scope key a framework adapter sets to the type of an exception the framework answered
#: itself (Litestar, Falcon turn a raising handler into a 500 and do not re-raise).
EXC_KEY = "instrument.exc"

_set = current.set
_reset = current.reset
_rec = runtime.recorder  # one per process, for the life of the process
_buf = _rec.buf  # cleared in place, never replaced
_next_id = IDS.popleft
_readers = READERS
_started = _rec.started
_ended = _rec.ended
_ex_default, _ex_until, _cut = DEFAULT, UNTIL, CUTS.get
_UA_NAME = b"user-agent"
_first = itemgetter(0)
_RID_NAME = b"x-request-id"
_TP_NAME = b"traceparent"
_TS_NAME = b"tracestate"


class _Anything:
    """Equal to every value: ``(name, _Anything())`` finds a header by its name alone."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return True


# ``in`` compares it with each (name, value) tuple in C, name first: a header named otherwise
# fails on its name (bytes ==, a length check) and this object is only asked on a match.
# 840 instructions a request less than mapping an itemgetter over the names
# (benchmarks/instructions.py, two request headers).
_RID_PROBE = (_RID_NAME, _Anything())
_TP_PROBE = (_TP_NAME, _Anything())


def _header(headers: Any, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lowercase, as ASGI servers give names)."""
    for k, v in headers:
        if k == name:
            return bytes(v)
    return None


class _Methods:
    """What the pure-Python and the compiled exchange share (the compiled one has ``send``)."""

    __slots__ = ()
    # the fields, as either exchange holds them (slots here, a C struct there)
    _receive: Any
    _send: Any
    disc: bool
    qb: int
    rb: int
    rid: str | None
    scope: Any
    status: int
    t_end: float
    tf: float
    # this request's traceparent: bytes when it came with one (and the response says so), str
    # when it started a trace on first use, None before that, b"" with trace context off
    tp: bytes | str | None

    async def receive(self) -> Message:
        message = await self._receive()
        kind = message["type"]
        if kind == "http.request":
            body = message.get("body")
            if body:
                self.qb += len(body)  # type: ignore[misc]
        elif kind == "http.disconnect" and not self.t_end:
            # Servers answer receive() with http.disconnect once the response is complete
            # (Starlette's streaming responses listen for it): only earlier ones count.
            self.disc = True  # type: ignore[misc]  # a field of both subclasses
        return message

    def describe(self) -> tuple[str, str, str]:
        return self.rid or "", self.scope.get("method", ""), route_of(self.scope)

    def traceparent(self) -> str | None:
        """This request's own ``traceparent`` (its span); a trace is started on first use."""
        tp = self.tp
        if tp is None:
            tp = self.tp = fresh()  # type: ignore[misc]
        elif tp.__class__ is bytes:
            return tp.decode("ascii") or None
        return tp  # type: ignore[return-value]

    def tracestate(self) -> str | None:
        """The caller's ``tracestate``, when this request continues the caller's trace."""
        tp = self.tp
        if not tp or tp.__class__ is not bytes:
            return None
        headers = self.scope.get("headers") or ()
        raw = _header(headers, _TP_NAME)
        if raw is None or raw[3:35] != tp[3:35]:
            return None
        return tracestate(_header(headers, _TS_NAME))


class _Exchange(_Methods):
    """One request: counters, the wrapped receive and send, and the request context.

    The reference for the compiled exchange (``_asgi.c``) and the fallback without it.
    """

    __slots__ = ("_receive", "_send", "disc", "qb", "rb", "rid", "scope", "status", "t_end", "tf",
                 "tp")
    # No __init__: the middleware sets the slots inline, a Python call frame costs more.

    def send(self, message: Message) -> Awaitable[None]:
        # Not a coroutine function: it hands back the server's own awaitable, so a send
        # costs no extra coroutine. Only the last body chunk is awaited here, because the
        # request ends when the server has taken it (servers wait for the client first).
        kind = message["type"]
        if kind == "http.response.body":
            body = message.get("body")
            if body:
                self.rb += len(body)
            if message.get("more_body", False):
                return self._send(message)
            return self._send_last(message)
        if kind == "http.response.start":
            self.status = message["status"]
            rid = self.rid
            tp = self.tp
            # A new list: the app may reuse its headers. Ids are ASCII (incoming ones are
            # checked), so the default codec's fast path encodes them right.
            if rid is not None:
                if tp and tp.__class__ is bytes:
                    message["headers"] = [*message.get("headers", ()), (_RID_NAME, rid.encode()),
                                          (_TP_NAME, tp)]
                else:
                    message["headers"] = [*message.get("headers", ()), (_RID_NAME, rid.encode())]
            elif tp and tp.__class__ is bytes:
                message["headers"] = [*message.get("headers", ()), (_TP_NAME, tp)]
            self.tf = perf_counter()
            return self._send(message)
        if kind == "http.response.pathsend":
            return self._send_last(message)
        return self._send(message)

    async def _send_last(self, message: Message) -> None:
        await self._send(message)
        self.t_end = perf_counter()


_Native: Any
try:
    from instrument.adapters import _asgi
except ImportError:  # not compiled at install (no C compiler): the pure-Python exchange
    _Native = None
else:
    class _Native(_asgi.Exchange, _Methods):  # type: ignore[no-redef]
        """The exchange compiled: its fields, ``send``, and ``record`` (the request's sample
        into the buffer, as the middleware's ``finally`` does in Python). Built with
        ``_Native(scope, receive, send)``; the rest is set as on the Python one."""

        __slots__ = ()



def record_into(rec: Any) -> Any:
    """Send this module's requests to recorder ``rec`` (the demo's benchmark keeps its own
    samples apart this way); returns the recorder they went to."""
    global _rec, _buf
    old, _rec, _buf = _rec, rec, rec.buf
    if _Native is not None:  # the compiled exchange is bound to one recorder too
        _asgi.bind(rec, rec.buf.extend, UNTIL, DEFAULT, CUTS, EXC_KEY, KIND_HTTP)
    return old


record_into(_rec)
if _Native is not None:  # what the compiled constructor's ids step calls beyond its own lines
    _asgi.bind_trace(*TRACE_BINDING, continued_bytes, IDS.popleft, new_id, incoming_id)
    # what begin() builds, the receive run() wraps, and the request context it sets
    _asgi.bind_class(_Native, _Methods.receive, READERS, current)
_begin: Any = _asgi.begin if _Native is not None else None


def exchange_class(native: bool = True) -> type[_Methods]:
    """The exchange a middleware uses: the compiled one when built and ``native``."""
    return _Native if native and _Native is not None else _Exchange


#: the middleware's attributes the compiled begin(), run() and done() read, as one tuple
_HOW = ("app", "_ids", "_resolve", "_templates")


class InstrumentMiddleware:
    """Wrap any ASGI app, or ``app.add_middleware(InstrumentMiddleware)`` on Starlette/FastAPI.

    With ``INSTRUMENT_ENABLED=false`` the constructor returns ``app`` itself.
    """

    def __new__(cls, app: ASGIApp, **options: Any) -> Any:
        runtime.ensure_started()
        if runtime.state == OFF:
            return app
        return super().__new__(cls)

    def __init__(self, app: ASGIApp, *, exclude_paths: Iterable[str] | None = None) -> None:
        settings = runtime.ensure_started()
        self.app = app
        # excluded paths (and the kit's /metrics and dashboard) are answered, never recorded
        self._bypass, self._exclude = front(app, settings, exclude_paths, asgi=True)
        resolver = RouteResolver(app)
        self._resolve = resolver.__call__  # a bound method: cheaper to call
        self._templates = resolver._templates  # the compiled exchange reads its cache
        self._rid = settings.request_id
        self._tc = settings.trace_context
        # the compiled twin, unless INSTRUMENT_NATIVE=false (the same answers)
        self._continued = fast_continued_bytes if settings.native else continued_bytes
        self._exchange = exchange_class(settings.native)
        self._native = self._exchange is _Native
        # the compiled constructor's ids step: which of the request id and trace context run
        self._ids = (1 if self._rid else 0) | (2 if self._tc else 0)
        # what the compiled begin(), run() and done() read: the app, those flags, the route
        # (kept in step by __setattr__: the Litestar and Falcon adapters set their resolver)
        self._how = tuple(getattr(self, n) for n in _HOW)
        if self._tc:
            use()  # fresh trace and span ids minted ahead from now on
        if settings.profiler:
            _profile_worker_threads()

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _HOW and "_how" in self.__dict__:
            object.__setattr__(self, "_how", tuple(getattr(self, n) for n in _HOW))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                send = _FlushOnShutdown(send)
            await self.app(scope, receive, send)
            return
        exclude = self._exclude
        if exclude is not None and scope["path"] in exclude:
            await self._bypass(scope, receive, send)
            return
        if self._native:
            # the lines below compiled: ids, context, t0 and the started count (begin, run),
            # then the end, the ended count, the context reset and the sample (done)
            ex = _begin(self._how, scope, receive, send)
            try:
                await ex.run()
            except BaseException as e:
                ex.done(e)  # it goes to the flusher (its group), then on unchanged
                raise
            ex.done(None)
            return
        root0 = scope.get("root_path", "")
        tok = None
        ex = _Exchange()
        ex.scope = scope
        ex._receive = receive
        ex._send = send
        ex.qb = ex.rb = 0
        ex.status = 500
        ex.tf = ex.t_end = 0.0
        ex.disc = False
        headers = scope["headers"]
        # Servers send (name, value) tuples; for one sending lists, the names are scanned.
        lists = headers and headers[0].__class__ is not tuple
        if _TP_PROBE in headers:
            in_tp = headers[headers.index(_TP_PROBE)][1]
        elif lists and _TP_NAME in map(_first, headers):
            in_tp = next(v for k, v in headers if k == _TP_NAME)
        else:
            in_tp = None
        if _RID_PROBE in headers or (lists and _RID_NAME in map(_first, headers)):
            in_rid = next(v for k, v in headers if k == _RID_NAME)
        else:
            in_rid = None
        trace_rid = None
        if not self._tc:
            ex.tp = b""
        elif in_tp is not None:  # continued: the caller's trace id may be the request id
            ex.tp, trace_rid = self._continued(in_tp)
        else:
            ex.tp = None  # started only if something asks (a log line, an outgoing call)
        if self._rid:
            if in_rid is not None:
                ex.rid = incoming_id(in_rid)
            elif trace_rid is not None:
                ex.rid = trace_rid
            else:
                try:
                    ex.rid = _next_id()
                except IndexError:  # none minted ahead (yet): mint one here
                    ex.rid = PREFIX[0] + str(next(COUNTER))
            if _readers[0]:
                tok = _set(ex)
        else:
            ex.rid = None
            if self._tc and _readers[0]:
                tok = _set(ex)
        t0 = perf_counter()
        next(_started)
        exc: BaseException | None = None
        try:
            await self.app(scope, ex.receive, ex.send)
        except BaseException as e:
            exc = e
            raise
        finally:
            t1 = ex.t_end or perf_counter()
            next(_ended)
            if tok is not None:
                try:
                    _reset(tok)
                except (ValueError, RuntimeError):  # left from another context
                    _set(None)
            route = self._resolve(scope, root0)
            status = 500 if exc else ex.status
            # a candidate exemplar carries its details (see the WSGI middleware)
            if (t0 >= _ex_until[0] or t1 - t0 >= _cut(route, _ex_default[0])
                    or status >= 500):
                disc: Any = (ex.disc, ex.rid, scope.get("path"), scope.get("query_string"),
                             scope.get("client"), _header(scope["headers"], _UA_NAME), ex.tp)
            else:
                disc = ex.disc
            sample = (KIND_HTTP, t0, t1, ex.tf, route, scope["method"], status, ex.qb,
                      ex.rb, exc or scope.get(EXC_KEY), disc)
            exc = None  # the flusher has it (its group): no frame -> exception cycle kept
            # Recorder.add, inlined: a bounded append, or an exact drop count
            # (below half full, the common case, one compare: high <= cap)
            n = len(_buf)
            if n < _rec.high:
                _buf.extend(sample)  # flat: see _buffer
            elif n < _rec.cap:
                _buf.extend(sample)
                if n < _rec.high_end:  # the one append that crosses half full wakes it
                    _rec.wake()
            else:
                next(_rec.drops)


class _FlushOnShutdown:
    """Wraps a lifespan ``send``: flush what is buffered before shutdown is reported complete.

    Some servers end the process without running ``atexit`` handlers once shutdown
    completes (uvicorn >= 0.29 re-raises the SIGTERM it caught, with the default
    handler back), so this is the last moment buffered samples can be saved.
    """

    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    async def __call__(self, message: Message) -> None:
        if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            timeout = runtime.settings.shutdown_timeout if runtime.settings else 5.0
            await asyncio.get_running_loop().run_in_executor(None, runtime.flush, timeout)
        await self._send(message)


def _profiled(frame: Any) -> tuple[str, str] | None:
    """The route and method of the request a middleware coroutine serves (for the profiler)."""
    local = frame.f_locals
    ex, mw = local.get("ex"), local.get("self")
    try:
        scope = ex.scope
        root0 = local.get("root0")
        if root0 is None:  # the compiled exchange keeps it
            root0 = getattr(ex, "root0", None) or ""
        return (str(mw._resolve(scope, root0)),
                str(scope.get("method") or ""))
    except (AttributeError, KeyError, TypeError):  # not a request (yet), or not http
        return None


register(InstrumentMiddleware.__call__.__code__, _profiled)


@functools.cache  # once a process: every middleware instance asks
def _profile_worker_threads() -> None:
    """Let the profiler attribute anyio's worker threads, where FastAPI's and Starlette's
    plain ``def`` endpoints run, to the request each runs for (found by its context)."""
    try:
        from anyio._backends._asyncio import WorkerThread
    except ImportError:  # no anyio: nothing runs requests in its threads
        return
    try:
        source, first = inspect.getsourcelines(WorkerThread.run)
    except (OSError, TypeError):  # no source (a frozen build): leave them unattributed
        return
    lines = frozenset(first + i for i, line in enumerate(source) if "context.run(" in line)
    if lines:
        register_worker(WorkerThread.run.__code__, "context", lines)
