"""Django middleware: the first entry in ``MIDDLEWARE``, for WSGI and ASGI Django alike.

A request is timed from the middleware's call until Django closes the response,
which servers do after the last byte (WSGI) or after the last ``send`` (ASGI);
the response gets a closer for that, so nothing is polled or patched. A body
held whole is sized at close, a streamed one (``StreamingHttpResponse``,
``FileResponse``, sync or async iterator) as its chunks flow through a counting
generator. Routes are named by their URL pattern (``resolver_match.route``,
includes joined, a leading ``/``; ``re_path`` patterns by their regex without
the ``^``) through a cache, so a request pays one dict lookup for its name.
Unmatched paths fold into ``__unmatched__``. Exceptions Django answered as a 500
are noted by a ``got_request_exception`` receiver; ``Http404`` and
``PermissionDenied`` are the app's answers, stored with their status alone.
"""

from __future__ import annotations

from asyncio import CancelledError
from time import perf_counter
from typing import Any

from instrument._errors import missing_extra
from instrument.adapters.django_body import acount, count, request_bytes, scrape
from instrument.adapters.django_conf import django_settings
from instrument.adapters.front import Excludes
from instrument.core.batch import UNMATCHED
from instrument.core.buffer import KIND_HTTP
from instrument.core.context import COUNTER, IDS, PREFIX, READERS, current, incoming_id
from instrument.core.exemplars import CUTS, DEFAULT, UNTIL
from instrument.core.profiler import register, register_worker
from instrument.core.runtime import OFF, runtime
from instrument.core.trace import continued, fast_continued, fresh, tracestate, use

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.core.exceptions import MiddlewareNotUsed
    from django.core.signals import got_request_exception
    from django.utils.decorators import sync_and_async_middleware
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("django", "django") from exc

__all__ = ["REQUEST_ATTR", "InstrumentMiddleware"]

#: Attribute of the Django request holding this request's exchange (the kit's own views
#: set ``skip`` on it; the exception receiver notes the exception type).
REQUEST_ATTR = "_instrument"

_set = current.set
_reset = current.reset
_rec = runtime.recorder  # one per process, for the life of the process
_buf = _rec.buf  # cleared in place, never replaced
_next_id = IDS.popleft
_readers = READERS
_started = _rec.started
_ended = _rec.ended
_ex_default, _ex_until, _cut = DEFAULT, UNTIL, CUTS.get
_CACHE_LIMIT = 4096
#: resolver_match.route -> stored template ("articles/<int:year>/" -> "/articles/<int:year>/")
_names: dict[str | None, str] = {}


def _name_of(route: str | None, request: Any) -> str:
    """The template of a route Django matched: one leading ``/``, a regex's ``^`` dropped."""
    if route is None:  # a resolver_match built by hand: the path, behind the flusher's guard
        return str(request.path_info)
    name = "/" + route.removeprefix("^")
    if len(_names) < _CACHE_LIMIT:
        _names[route] = name
    return name


class _Exchange:
    """One request: timing, byte counts, its ids and what closes it; ``current`` holds it."""

    __slots__ = ("closed", "done", "exc", "rb", "req", "resp", "rid", "skip", "t0", "tf", "tok",
                 "tp")
    closed: bool
    done: bool
    exc: BaseException | None
    rb: int
    req: Any
    resp: Any
    rid: str | None
    skip: bool
    t0: float
    tf: float
    tok: Any
    tp: str | None  # this request's traceparent; None: not started yet; "": trace context off

    def close(self) -> None:
        """The response is closed (last byte sent): record the request, once."""
        if self.closed:
            return
        t1 = perf_counter()
        self.closed = True
        next(_ended)
        tok = self.tok
        if tok is not None:
            try:
                _reset(tok)
            except (ValueError, RuntimeError):  # closed from another context (ASGI's thread)
                _set(None)
        req = self.req
        req._instrument = None  # no cycle left: request and response die by reference count
        if self.skip:
            return
        resp = self.resp
        exc = self.exc
        if resp is None:
            status = 500
            rb = 0
        else:
            status = 500 if exc else resp.status_code
            rb = self.rb if resp.streaming else len(resp.content)
        match = req.resolver_match
        if match is None:
            name = UNMATCHED
        else:
            route = match.route
            name = _names.get(route) or _name_of(route, req)
        meta = req.META
        cl = meta.get("CONTENT_LENGTH")
        qb = request_bytes(cl, req) if cl or "HTTP_TRANSFER_ENCODING" in meta else 0
        t0 = self.t0
        # a candidate exemplar carries its details (see instrument.core.exemplars)
        if t0 >= _ex_until[0] or t1 - t0 >= _cut(name, _ex_default[0]) or status >= 500:
            disc: Any = (not self.done, self.rid, req.path, meta.get("QUERY_STRING"),
                         meta.get("REMOTE_ADDR"), meta.get("HTTP_USER_AGENT"), self.tp)
        else:
            disc = not self.done
        sample = (KIND_HTTP, t0, t1, self.tf or t1, name, req.method, status, qb, rb, exc, disc)
        # Recorder.add, inlined: a bounded append, or an exact drop count
        # (below half full, the common case, one compare: high <= cap)
        n = len(_buf)
        if n < _rec.high:
            _buf.extend(sample)  # flat: see core.buffer
        elif n < _rec.cap:
            _buf.extend(sample)
            if n < _rec.high_end:  # the one append that crosses half full wakes it
                _rec.wake()
        else:
            next(_rec.drops)

    def describe(self) -> tuple[str, str, str]:
        req = self.req
        match = req.resolver_match
        if match is None:
            route = req.path_info
        else:
            route = _names.get(match.route) or _name_of(match.route, req)
        return self.rid or "", req.method or "", route

    def traceparent(self) -> str | None:
        """This request's own ``traceparent`` (its span); a trace is started on first use."""
        tp = self.tp
        if tp is None:
            tp = self.tp = fresh()
        return tp or None

    def tracestate(self) -> str | None:
        """The caller's ``tracestate``, when this request continues the caller's trace."""
        tp = self.tp
        meta = self.req.META
        raw = meta.get("HTTP_TRACEPARENT")
        if tp is None or raw is None or raw[3:35] != tp[3:35]:
            return None
        return tracestate(meta.get("HTTP_TRACESTATE"))


def _on_exception(sender: Any, request: Any = None, **extra: Any) -> None:
    """Django answered an exception as a 500: note its type (sys.exc_info is still it)."""
    import sys

    ex = getattr(request, REQUEST_ATTR, None)
    kind = sys.exc_info()[1]
    if ex is not None and kind is not None:
        ex.exc = kind


@sync_and_async_middleware
class InstrumentMiddleware:
    """``"instrument.django.InstrumentMiddleware"``, first in ``MIDDLEWARE``.

    With ``INSTRUMENT_ENABLED=false`` Django leaves it out of the chain
    (``MiddlewareNotUsed``), so the kill switch costs nothing. Settings come from
    ``INSTRUMENT_*`` variables and an optional ``INSTRUMENT = {...}`` in Django's settings.
    """

    def __new__(cls, get_response: Any) -> Any:
        django_settings()
        if runtime.state == OFF:
            raise MiddlewareNotUsed("instrument: INSTRUMENT_ENABLED is false")
        if iscoroutinefunction(get_response) and cls is InstrumentMiddleware:
            return super().__new__(_AsyncInstrumentMiddleware)
        return super().__new__(cls)

    def __init__(self, get_response: Any) -> None:
        settings = django_settings()
        self.get_response = get_response
        self._rid = settings.request_id
        self._tc = settings.trace_context
        # the compiled twin, unless INSTRUMENT_NATIVE=false (the same answers)
        self._continued = fast_continued if settings.native else continued
        if self._tc:
            use()  # fresh trace and span ids minted ahead from now on
        paths = list(settings.exclude_paths)
        self._metrics_path = settings.metrics_path if settings.prometheus else None
        self._metrics: Any = None
        if self._metrics_path is not None:
            from instrument.exporters.serve import MetricsWSGI

            self._metrics = MetricsWSGI(None, self._metrics_path)
            paths.append(self._metrics_path)
        excludes = Excludes(paths)
        # None instead of an empty set spares a request the membership test
        self._exclude = (excludes if excludes.prefixes else excludes.exact) if excludes else None
        got_request_exception.connect(_on_exception, dispatch_uid="instrument.django")

    def _start(self, request: Any) -> _Exchange:
        """The exchange of a request just begun: ids read or minted, made current."""
        t0 = perf_counter()
        next(_started)  # in flight until close()
        ex = _Exchange()
        ex.t0 = t0
        ex.req = request
        ex.resp = None
        ex.tf = 0.0
        ex.rb = 0
        ex.exc = None
        ex.done = True
        ex.skip = ex.closed = False
        request._instrument = ex
        meta = request.META
        trace_rid = None
        if not self._tc:
            ex.tp = ""
        elif "HTTP_TRACEPARENT" in meta:
            # continued: the caller's trace id may serve as the request id
            ex.tp, trace_rid = self._continued(meta["HTTP_TRACEPARENT"])
        else:
            ex.tp = None  # started only if something asks (a log line, an outgoing call)
        if self._rid:
            raw = meta.get("HTTP_X_REQUEST_ID")
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
        return ex

    def __call__(self, request: Any) -> Any:
        exclude = self._exclude
        if exclude is not None and request.path_info in exclude:
            return self._bypass(request)
        ex = self._start(request)
        try:
            response = self.get_response(request)
        except BaseException as e:  # DEBUG_PROPAGATE_EXCEPTIONS, or not an Exception
            ex.exc = e
            ex.close()
            raise
        _answered(ex, response)
        return response

    def _bypass(self, request: Any) -> Any:
        if request.path_info == self._metrics_path:
            return scrape(self._metrics, request)
        return self.get_response(request)  # excluded: answered by the app, never recorded


class _AsyncInstrumentMiddleware(InstrumentMiddleware):
    """The same middleware in an async chain (ASGI Django with async-capable middleware)."""

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        markcoroutinefunction(self)

    async def __call__(self, request: Any) -> Any:
        exclude = self._exclude
        if exclude is not None and request.path_info in exclude:
            if request.path_info == self._metrics_path:
                import asyncio

                return await asyncio.to_thread(scrape, self._metrics, request)
            return await self.get_response(request)
        ex = self._start(request)
        try:
            response = await self.get_response(request)
        except BaseException as e:  # a disconnect cancels the task; or propagated exceptions
            ex.exc = e
            ex.done = not isinstance(e, CancelledError)  # the client left before the answer
            ex.close()
            raise
        _answered(ex, response)
        return response


def _answered(ex: _Exchange, response: Any) -> None:
    """Echo the ids, count a streamed body as it flows, close the exchange with the response."""
    ex.resp = response
    rid = ex.rid
    tp = ex.tp
    # Straight into the header store: the id was checked (safe ASCII), and the public
    # __setitem__ re-validates both strings on every request.
    store = response.headers._store
    if rid is not None:
        store["x-request-id"] = ("X-Request-ID", rid)
    if tp and "HTTP_TRACEPARENT" in ex.req.META:  # a trace this request started is not announced
        store["traceparent"] = ("traceparent", tp)
    if response.streaming:
        if response.is_async:
            response.streaming_content = acount(ex, response.streaming_content)
        else:
            response.streaming_content = count(ex, response.streaming_content)
    response._resource_closers.append(ex.close)


def _profiled(frame: Any) -> tuple[str, str] | None:
    """The route and method of the request a middleware frame serves (for the profiler)."""
    ex = frame.f_locals.get("ex")
    try:
        _, method, route = ex.describe()
    except AttributeError:  # before the exchange is set up
        return None
    return str(route), str(method)


# The middleware's call (sync and async) and a streamed body's counting generator, which
# runs the response's own iterator: their frames mark a request for the sampling profiler.
for _code in (InstrumentMiddleware.__call__.__code__,
              _AsyncInstrumentMiddleware.__call__.__code__, count.__code__, acount.__code__):
    register(_code, _profiled)


def _profile_sync_to_async() -> None:
    """Under ASGI, Django runs sync views (and sync streams' iterators) in asgiref's worker
    threads, inside ``SyncToAsync.__call__``'s inner ``func``, which holds the request's
    copied context as ``context``: the profiler attributes those threads through it."""
    from asgiref.sync import SyncToAsync

    for const in SyncToAsync.__call__.__code__.co_consts:
        if getattr(const, "co_name", None) == "func" and "context" in const.co_freevars:
            register_worker(const, "context")


_profile_sync_to_async()
