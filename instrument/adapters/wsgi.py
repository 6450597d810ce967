"""WSGI middleware: times each request until its response iterable is closed.

A request costs two clock reads (start, close; a streamed body adds one at its
first chunk), byte counting on ``wsgi.input`` and on the response chunks as
they flow, and one append to the buffer. A body handed over whole as a list is
iterated natively and sized at close. The status line is kept as the string the
app gave and parsed later by the flusher. One object per request serves as
``start_response``, response iterable and request context.

That object is compiled (``_wsgi.c``) where the install had a C compiler, as it does
under ``make``; ``_Exchange`` below is its reference and the fallback
(``INSTRUMENT_NATIVE=false`` chooses it). tests/test_wsgi_native.py holds the two to
the same headers, samples and exemplar details.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from time import perf_counter
from typing import Any

from instrument.adapters.front import front
from instrument.core.buffer import KIND_HTTP
from instrument.core.context import (
    COUNTER,
    IDS,
    PREFIX,
    READERS,
    REQUEST_ID_HEADER,
    current,
    incoming_id,
    new_id,
)
from instrument.core.exemplars import CUTS, DEFAULT, UNTIL
from instrument.core.profiler import register
from instrument.core.runtime import OFF, runtime
from instrument.core.trace import (
    TRACE_BINDING,
    TRACEPARENT,
    continued,
    fast_continued,
    fresh,
    tracestate,
    use,
)
from instrument.types import StartResponse, WSGIApp, WSGIEnviron

__all__ = ["EXC_KEY", "ROUTE_KEY", "InstrumentMiddleware"]

_set = current.set
_reset = current.reset
_rec = runtime.recorder  # one per process, for the life of the process
_buf = _rec.buf  # cleared in place, never replaced
_next_id = IDS.popleft
_readers = READERS
_started = _rec.started
_ended = _rec.ended
_ex_default, _ex_until, _cut = DEFAULT, UNTIL, CUTS.get

#: environ key a framework adapter sets to the matched route template.
ROUTE_KEY = "instrument.route"
#: environ key a framework adapter sets to the type of an exception it handled itself.
EXC_KEY = "instrument.exc"


class _Input:
    """Counts request body bytes as the app reads them (chunked uploads included)."""

    __slots__ = ("_raw", "n")

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.n = 0

    def read(self, *args: Any) -> bytes:
        data: bytes = self._raw.read(*args)
        self.n += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._raw.readline(*args)
        self.n += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n: int = self._raw.readinto(buffer)
        self.n += n or 0
        return n

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self._raw.readlines(*args)
        self.n += sum(len(x) for x in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self.readline()
        if not data:
            raise StopIteration
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Methods:
    """What the pure-Python and the compiled exchange share (the compiled one has the rest)."""

    __slots__ = ()
    env: dict[str, Any]
    rid: str | None
    tp: str | None

    def describe(self) -> tuple[str, str, str]:
        env = self.env
        return (self.rid or "", env.get("REQUEST_METHOD", ""),
                env.get(ROUTE_KEY) or env.get("PATH_INFO", ""))

    def traceparent(self) -> str | None:
        """This request's own ``traceparent`` (its span); a trace is started on first use."""
        tp = self.tp
        if tp is None:
            tp = self.tp = fresh()  # type: ignore[misc]  # a field of both subclasses
        return tp or None

    def tracestate(self) -> str | None:
        """The caller's ``tracestate``, when this request continues the caller's trace."""
        tp = self.tp
        raw = self.env.get("HTTP_TRACEPARENT")
        if tp is None or raw is None or raw[3:35] != tp[3:35]:
            return None
        return tracestate(self.env.get("HTTP_TRACESTATE"))


class _Exchange(list[bytes], _Methods):
    """One request: start_response, the response body and the request context in one object.

    A list subclass: when the app hands over its body whole as a list (the common
    case for plain WSGI apps), the body's chunks are moved into this object and the
    server iterates it natively, with no Python call per chunk, and then calls
    :meth:`close`. Streamed bodies go through :func:`_stream` instead, which calls
    :meth:`close` when they end. It is also what ``_context.current`` holds during
    the request, so making the request current builds nothing.
    """

    __slots__ = ("_sr", "_w", "done", "env", "exc", "inp", "rb", "rid", "route", "status", "t0",
                 "tf", "tok", "tp")
    # Annotations only (no values: slots and class attributes cannot share a name).
    _sr: Any
    _w: Any
    done: bool
    env: dict[str, Any]
    exc: BaseException | None
    inp: Any
    rb: int
    rid: str | None
    route: str | None
    status: str
    t0: float
    tf: float
    tok: Any
    tp: str | None  # this request's traceparent; None: not started yet; "": trace context off

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        # Passed to the app as a bound method: calling an instance would cost more.
        self.status = status
        rid = self.rid
        tp = self.tp
        if tp and "HTTP_TRACEPARENT" not in self.env:
            tp = None  # a trace this request started itself is not announced
        if rid is not None:  # a new list: the app may reuse its headers list
            if tp:
                headers = [*headers, (REQUEST_ID_HEADER, rid), (TRACEPARENT, tp)]
            else:
                headers = [*headers, (REQUEST_ID_HEADER, rid)]
        elif tp:
            headers = [*headers, (TRACEPARENT, tp)]
        self._w = self._sr(status, headers, exc_info) if exc_info else self._sr(status, headers)
        return self._counting_write  # a bound method: a closure here costs ~1.5k instructions

    def _counting_write(self, data: bytes) -> Any:
        self.rb += len(data)
        if not self.tf:
            self.tf = perf_counter()
        return self._w(data)

    def close(self) -> None:
        """The request ends: record it (inline, as a call would cost more than the work)."""
        t1 = perf_counter()
        next(_ended)
        tok = self.tok
        if tok is not None:
            try:
                _reset(tok)
            except (ValueError, RuntimeError):  # closed from another context, or twice
                _set(None)
        rb = self.rb
        for chunk in self:  # a body handed over whole: sized here, sent in one go
            rb += len(chunk)
        env = self.env
        exc = self.exc
        inp = self.inp
        t0 = self.t0
        route = env.get(ROUTE_KEY) or self.route or env.get("PATH_INFO")
        if exc:  # the exception itself goes to the flusher (its group); no cycle kept here
            status = "500"
            self.exc = None
        else:
            status = self.status
        # A candidate exemplar (instrument.core.exemplars) carries its details; the others,
        # nearly all once the flusher has published its cuts, pay these compares only.
        # (an exception made the status "500"; exemplars off: no cut is ever reached)
        if t0 >= _ex_until[0] or t1 - t0 >= _cut(route, _ex_default[0]) or status >= "5":
            disc: Any = (not self.done, self.rid, env.get("PATH_INFO"), env.get("QUERY_STRING"),
                         env.get("REMOTE_ADDR"), env.get("HTTP_USER_AGENT"), self.tp)
        else:
            disc = not self.done
        sample = (KIND_HTTP, t0, t1, self.tf or t1, route, env.get("REQUEST_METHOD"), status,
                  inp.n if inp is not None else 0, rb, exc or env.get(EXC_KEY), disc)
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


def _stream(ex: _Exchange, res: Iterable[bytes]) -> Iterator[bytes]:
    """A streamed body: count chunks as they flow; record when it ends or is abandoned.

    A generator, primed by the middleware (run up to its first ``yield``) so that the
    server's ``close()`` always reaches the ``finally`` even when it never iterated.
    Resuming it costs less than a method call per chunk.
    """
    ex.done = False
    rb = 0
    tf = 0.0
    try:
        yield b""  # the priming stop: never seen by the server
        for chunk in res:
            rb += len(chunk)
            if not tf:
                tf = perf_counter()
            yield chunk
        ex.done = True
    except GeneratorExit:  # abandoned mid-body: recorded as a disconnect
        raise
    except BaseException as e:
        ex.exc = e
        ex.done = True
        raise
    finally:
        ex.rb += rb
        if not ex.tf:
            ex.tf = tf
        try:
            close = getattr(res, "close", None)
            if close is not None:
                close()
        except BaseException as e:
            ex.exc = e
            raise
        finally:
            ex.close()


_Native: Any
try:
    from instrument.adapters import _wsgi
except ImportError:  # not compiled at install (no C compiler): the pure-Python exchange
    _Native = None
else:
    class _Native(_wsgi.Exchange, _Methods):  # type: ignore[no-redef]
        """The exchange compiled: ``start_response``, the counting write and ``close`` (the
        request's sample into the buffer). Built with ``_Native(environ, start_response,
        t0, route)``; the rest is set as on the Python one."""

        __slots__ = ()



def record_into(rec: Any) -> Any:
    """Send this module's requests to recorder ``rec`` (the demo's benchmark keeps its own
    samples apart this way); returns the recorder they went to."""
    global _rec, _buf
    old, _rec, _buf = _rec, rec, rec.buf
    if _Native is not None:  # the compiled exchange is bound to one recorder too
        _wsgi.bind(rec, rec.buf.extend, UNTIL, DEFAULT, CUTS, _ended, _reset, _set, ROUTE_KEY,
                   EXC_KEY, KIND_HTTP)
    return old


record_into(_rec)
if _Native is not None:  # what the compiled constructor's ids step calls beyond its own lines
    _wsgi.bind_trace(*TRACE_BINDING, continued, IDS.popleft, new_id, incoming_id)


class InstrumentMiddleware:
    """Wrap any WSGI app: ``app = InstrumentMiddleware(app)``.

    With ``INSTRUMENT_ENABLED=false`` the constructor returns ``app`` itself, so
    the kill switch costs nothing at all.
    """

    def __new__(cls, app: WSGIApp, **options: Any) -> Any:
        runtime.ensure_started()
        if runtime.state == OFF:
            return app
        return super().__new__(cls)

    def __init__(self, app: WSGIApp, *, exclude_paths: Iterable[str] | None = None) -> None:
        settings = runtime.ensure_started()
        self.app = app
        # excluded paths (and the kit's /metrics and dashboard) are answered, never recorded
        self._bypass, self._exclude = front(app, settings, exclude_paths, asgi=False)
        self._rid = settings.request_id
        self._tc = settings.trace_context
        # the compiled twin, unless INSTRUMENT_NATIVE=false (the same answers)
        self._continued = fast_continued if settings.native else continued
        self._native = settings.native and _Native is not None
        # the compiled constructor's ids step: which of the request id and trace context run
        self._ids = (1 if self._rid else 0) | (2 if self._tc else 0)
        if self._tc:
            use()  # fresh trace and span ids minted ahead from now on
        #: Route label when no framework adapter named one: None means the path
        #: (behind the flusher's cardinality guard); the Flask adapter sets "unmatched".
        self._unrouted: str | None = None

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        exclude = self._exclude
        if exclude is not None and environ.get("PATH_INFO", "") in exclude:
            return self._bypass(environ, start_response)
        t0 = perf_counter()
        next(_started)  # in flight until close()
        if self._native:  # its constructor sets what the Python one's lines below do,
            # the request id and traceparent included
            ex = _Native(environ, start_response, t0, self._unrouted, self._ids)
            if _readers[0] and self._ids:
                ex.tok = _set(ex)
        else:
            # Attributes set here, not in an __init__: a Python call frame costs more.
            ex = _Exchange()
            ex.env = environ
            ex._sr = start_response
            ex.t0 = t0
            ex.tf = 0.0
            ex.rb = 0
            ex.status = "500"
            ex.exc = None
            ex.done = True
            ex.route = self._unrouted
            ex.inp = None
            trace_rid = None
            if not self._tc:
                ex.tp = ""
            elif "HTTP_TRACEPARENT" in environ:
                # continued: the caller's trace id may serve as the request id
                ex.tp, trace_rid = self._continued(environ["HTTP_TRACEPARENT"])
            else:
                ex.tp = None  # started only if something asks (a log line, an outgoing call)
            if self._rid:
                raw = environ.get("HTTP_X_REQUEST_ID")
                if raw:
                    ex.rid = incoming_id(raw)
                elif trace_rid is not None:
                    ex.rid = trace_rid
                else:
                    try:
                        ex.rid = _next_id()
                    except IndexError:  # none minted ahead (yet): mint one here
                        ex.rid = PREFIX[0] + str(next(COUNTER))
                ex.tok = _set(ex) if _readers[0] else None
            else:
                ex.rid = None
                ex.tok = _set(ex) if self._tc and _readers[0] else None
        if environ.get("CONTENT_LENGTH") or "HTTP_TRANSFER_ENCODING" in environ:
            inp = ex.inp = _Input(environ["wsgi.input"])
            environ["wsgi.input"] = inp
        try:
            res = self.app(environ, ex.start_response)
        except BaseException as e:
            ex.exc = e
            ex.close()  # records the failed request
            raise
        if res.__class__ is list:
            ex += res
            return ex
        body = _stream(ex, res)
        next(body)
        return body


def _profiled(frame: Any) -> tuple[str, str] | None:
    """The route and method of the request a middleware frame serves (for the profiler)."""
    ex = frame.f_locals.get("ex")
    try:
        env = ex.env
        return (str(env.get(ROUTE_KEY) or ex.route or env.get("PATH_INFO") or ""),
                str(env.get("REQUEST_METHOD") or ""))
    except AttributeError:  # before the exchange is set up
        return None


register(InstrumentMiddleware.__call__.__code__, _profiled)
register(_stream.__code__, _profiled)  # a streamed body: the app's generator runs inside it
