"""The compiled WSGI exchange (``instrument/adapters/_wsgi.c``) against its pure-Python twin.

tests/test_wsgi.py and tests/test_flask_bodies.py run under a real server with each of
the two; here every way a WSGI request can go (a list body, a stream, ``write()``, an
abandoned stream, exceptions before and during the body, ``exc_info``, a framework's
route and exception keys, a counted upload, incoming ids) is run through both, and
what the server is told and what is buffered must be the same.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import create_environ

import instrument
from instrument.adapters import wsgi
from instrument.core import exemplars
from instrument.core.runtime import runtime
from instrument.wsgi import EXC_KEY, ROUTE_KEY, InstrumentMiddleware

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FAILURE = LookupError("no such item")


def test_the_compiled_exchange_is_built() -> None:
    assert wsgi._Native is not None, "instrument/adapters/_wsgi.c was not compiled (gcc?)"
    instrument.configure(native=False)
    assert InstrumentMiddleware(_app)._native is False
    instrument.configure()
    assert InstrumentMiddleware(_app)._native is True


def _app(environ: dict[str, Any], start_response: Any) -> Any:
    path = environ["PATH_INFO"]
    if path == "/raise":
        raise FAILURE
    if path == "/upload":
        size = len(environ["wsgi.input"].read())
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [str(size).encode()]
    if path == "/stream":
        start_response("200 OK", [])
        return iter([b"a", b"bb", b"ccc"])
    if path == "/stream-fails":
        def chunks() -> Iterator[bytes]:
            yield b"first"
            raise FAILURE
        start_response("200 OK", [])
        return chunks()
    if path == "/write":
        write = start_response("200 OK", [("X-App", "1")])
        write(b"written ")
        return [b"and returned"]
    if path == "/exc-info":
        try:
            raise KeyError("late")
        except KeyError:
            import sys
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"error page"]
    if path == "/framework":
        environ[ROUTE_KEY] = "/items/<int:id>"
        environ[EXC_KEY] = ValueError
        start_response("503 Service Unavailable", [("Retry-After", "1")])
        return [b"busy"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello ", b"world"]


_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("/ok", {"HTTP_USER_AGENT": "curl <x>", "QUERY_STRING": "q=1",
             "HTTP_X_REQUEST_ID": "given-1"}, "all"),
    ("/ok", {"HTTP_TRACEPARENT": TP}, "all"),
    ("/upload", {"CONTENT_LENGTH": "5", "wsgi.input": b"12345"}, "all"),
    ("/stream", {}, "all"),
    ("/stream", {}, "abandon"),
    ("/stream-fails", {}, "all"),
    ("/write", {}, "all"),
    ("/exc-info", {}, "all"),
    ("/framework", {"REMOTE_ADDR": "10.1.2.3"}, "all"),
    ("/raise", {}, "all"),
]


def _same(name: str, value: str) -> str:
    """A header with the parts that differ run to run (minted ids, span ids) cut away."""
    if name == "X-Request-ID" and value != "given-1":
        return "id" if len(value) != 32 else value  # a trace id serves as the request id
    if name == "traceparent":
        return value[:36]
    return value


def _run(native: bool, candidate: bool) -> tuple[list[Any], list[Any]]:
    instrument.configure(flush_interval=3600, native=native)
    mw = InstrumentMiddleware(_app)
    assert mw._native is native
    rec = runtime.recorder
    rec.drain(10_000)
    told: list[Any] = []
    saved = exemplars.UNTIL[0], exemplars.DEFAULT[0]
    exemplars.UNTIL[0] = 0.0 if candidate else float("inf")
    exemplars.DEFAULT[0] = float("inf")
    try:
        for path, extra, how in _REQUESTS:
            extra = dict(extra)
            body = extra.pop("wsgi.input", b"")
            environ = create_environ(path)
            environ.update(extra)
            environ["wsgi.input"] = io.BytesIO(body)

            def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
                told.append((status, [(k, _same(k, v)) for k, v in headers],
                              exc_info is not None))
                return lambda data: told.append(("write", data))

            try:
                result = mw(environ, start_response)
                chunks = []
                for chunk in result:
                    chunks.append(chunk)
                    if how == "abandon":
                        break
                # the exchange itself (a list) or the stream generator
                told.append(("body", chunks, isinstance(result, list)))
                result.close()
            except LookupError as e:
                assert e is FAILURE
                told.append(("raised", path))
        samples = rec.drain(10_000)
    finally:
        exemplars.UNTIL[0], exemplars.DEFAULT[0] = saved
    out = []
    for kind, t0, t1, tf, *rest in samples:
        assert t1 >= tf >= t0 > 0
        disc = rest[-1]
        if disc.__class__ is tuple:  # a minted request id / trace differs run to run
            rid = disc[1] if disc[1] in (None, "given-1") or len(disc[1]) == 32 else "minted"
            tp = disc[-1] if not disc[-1] else disc[-1][:36]
            disc = (disc[0], rid, *disc[2:-1], tp)
        out.append((kind, tf == t1, *rest[:-1], disc))
    return told, out


@pytest.mark.parametrize("candidate", [True, False], ids=["candidates", "past-the-cut"])
def test_the_compiled_exchange_tells_and_buffers_what_the_python_one_does(
        candidate: bool) -> None:
    assert wsgi._Native is not None
    native, pure = _run(True, candidate), _run(False, candidate)
    assert native[0] == pure[0]  # what the server was told, in order
    assert native[1] == pure[1]  # what was buffered
    samples = native[1]
    assert len(samples) == len(_REQUESTS)
    # (kind, no first byte, route, method, status, bytes in, bytes out, exception, disc)
    by_route = {}
    for s in samples:
        by_route.setdefault(s[2], []).append(s)
    assert [s[4:8] for s in by_route["/raise"]] == [("500", 0, 0, FAILURE)]
    assert by_route["/upload"][0][4:7] == ("201 Created", 5, 1)
    assert by_route["/items/<int:id>"][0][4] == "503 Service Unavailable"
    assert by_route["/items/<int:id>"][0][7] is ValueError
    assert [s[7] is FAILURE for s in by_route["/stream-fails"]] == [True]
    assert by_route["/write"][0][6] == len(b"written and returned")
    stream = by_route["/stream"]
    assert [s[6] for s in stream] == [6, 1]
    discs = [s[-1] if s[-1].__class__ is bool else s[-1][0] for s in stream]
    assert discs == [False, True]  # the abandoned one counts as a disconnect
    ok = by_route["/ok"][0][-1]
    if candidate:
        assert ok[:6] == (False, "given-1", "/ok", "q=1", None, "curl <x>")
    else:
        assert ok is False
    # the second request continued its caller's trace: its id is the trace id, and the
    # response says so (with a span of its own)
    assert native[0][2][:2] == ("200 OK", [("Content-Type", "text/plain"),
                                           ("X-Request-ID", TP[3:35]), ("traceparent", TP[:36])])


def test_the_compiled_exchange_does_not_leak() -> None:
    """Many requests, every way they can end, leave no exchange or allocation behind."""
    import gc
    import tracemalloc

    instrument.configure(flush_interval=3600)
    mw = InstrumentMiddleware(_app)
    assert mw._native
    rec = runtime.recorder

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return len

    def requests(n: int) -> None:
        for i in range(n):
            path, extra, how = _REQUESTS[i % len(_REQUESTS)]
            extra = dict(extra)
            environ = create_environ(path)
            environ["wsgi.input"] = io.BytesIO(extra.pop("wsgi.input", b""))
            environ.update(extra)
            environ["leak-test"] = True
            try:
                result = mw(environ, start_response)
                for _ in result:
                    if how == "abandon":
                        break
                result.close()
            except LookupError:
                pass
            # raising one exception object again adds to its traceback: start it afresh
            FAILURE.__traceback__ = None
            if i % 500 == 0:
                rec.drain(10_000)
        rec.drain(10_000)

    requests(1_000)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    requests(10_000)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    mine = tracemalloc.Filter(True, __file__)
    grown = sum(stat.size_diff for stat in after.filter_traces([mine]).compare_to(
        before.filter_traces([mine]), "filename"))
    assert grown < 64 * 1024, f"{grown} bytes more after 10,000 requests"
    left = [o for o in gc.get_objects()
            if type(o) is wsgi._Native and getattr(o, "env", {}).get("leak-test")]
    assert left == []
