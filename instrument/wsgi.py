"""WSGI middleware: times each request until its response iterable is closed.

A request costs three clock reads (start, first body chunk, close), byte
counting on ``wsgi.input`` and on the response chunks as they flow, and one
append to the buffer. The status line is kept as the string the app gave and
parsed later by the flusher.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from time import perf_counter
from typing import Any

from ._buffer import KIND_HTTP, Recorder
from ._context import REQUEST_ID_HEADER, leave, wsgi_enter
from ._excludes import front
from ._runtime import OFF, runtime
from .types import StartResponse, WSGIApp, WSGIEnviron

__all__ = ["EXC_KEY", "ROUTE_KEY", "InstrumentMiddleware"]

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


class _Exchange:
    """One request: start_response wrapper, response iterable and the counters in one object."""

    __slots__ = ("_it", "_rec", "_result", "_sr", "_w", "done", "env", "exc", "inp", "rb", "rid",
                 "status", "t0", "tf", "tok")

    def __init__(self, rec: Recorder, env: WSGIEnviron, start_response: StartResponse,
                 t0: float, inp: _Input | None) -> None:
        self._rec = rec
        self.env = env
        self._sr = start_response
        self.t0 = t0
        self.tf = 0.0
        self.rb = 0
        self.status = "500"
        self.exc: type[BaseException] | None = None
        self.inp = inp
        self.done = False
        self._it: Iterator[bytes] | None = None
        self._result: Iterable[bytes] | None = None
        self.rid: str | None = None
        self.tok: Any = None

    # start_response ----------------------------------------------------
    def __call__(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        self.status = status
        if self.rid is not None:  # a copy: the app may reuse its headers list
            headers = [*headers, (REQUEST_ID_HEADER, self.rid)]
        self._w = self._sr(status, headers, exc_info) if exc_info else self._sr(status, headers)
        return self._counting_write  # a bound method: a closure here costs ~1.5k instructions

    def _counting_write(self, data: bytes) -> Any:
        self.rb += len(data)
        if not self.tf:
            self.tf = perf_counter()
        return self._w(data)

    # response iterable -------------------------------------------------
    def __iter__(self) -> Iterator[bytes]:
        # A generator, not __next__: resuming one is cheaper than a method call per
        # chunk and it ends without raising StopIteration through Python code.
        assert self._result is not None
        try:
            for chunk in self._result:
                self.rb += len(chunk)
                if not self.tf:
                    self.tf = perf_counter()
                yield chunk
        except GeneratorExit:  # abandoned mid-body: close() records it as a disconnect
            raise
        except BaseException as e:
            self.exc = type(e)
            self.done = True
            raise
        self.done = True

    def __next__(self) -> bytes:
        """For callers that use the response as an iterator without ``iter()``."""
        it = self._it
        if it is None:
            it = self._it = self.__iter__()
        return next(it)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        except BaseException as e:
            self.exc = type(e)
            raise
        finally:  # the request ends here; recorded inline, a method call costs ~0.1 µs
            t1 = perf_counter()
            if self.tok is not None:
                leave(self.tok)
            env = self.env
            exc = self.exc or env.get(EXC_KEY)
            inp = self.inp
            self._rec.add((KIND_HTTP, self.t0, t1, self.tf,
                           env.get(ROUTE_KEY, env.get("PATH_INFO")), env.get("REQUEST_METHOD"),
                           "500" if self.exc else self.status, inp.n if inp is not None else 0,
                           self.rb, exc, not self.done))


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
        self._rec = runtime.recorder
        # excluded paths (and the kit's /metrics and dashboard) are answered, never recorded
        self._bypass, self._exclude = front(app, settings, exclude_paths, asgi=False)
        self._rid = settings.request_id

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        exclude = self._exclude
        if exclude is not None and environ.get("PATH_INFO", "") in exclude:
            return self._bypass(environ, start_response)
        t0 = perf_counter()
        inp = None
        if environ.get("CONTENT_LENGTH") or environ.get("HTTP_TRANSFER_ENCODING"):
            inp = _Input(environ["wsgi.input"])
            environ["wsgi.input"] = inp
        ex = _Exchange(self._rec, environ, start_response, t0, inp)
        if self._rid:
            ex.rid, ex.tok = wsgi_enter(environ)
        try:
            ex._result = self.app(environ, ex)
        except BaseException as e:
            ex.exc = type(e)
            ex.done = True
            ex.close()  # no result to close yet: just records the failed request
            raise
        return ex
