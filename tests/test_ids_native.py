"""The compiled constructors' ids step (``core/_traceparent.h``) against the Python twins.

Both compiled exchanges set a request's id and traceparent in their constructor (the
incoming ``X-Request-ID`` checked, else the caller's trace id, else one minted ahead;
the ``traceparent`` continued, started later, or off). Here every combination of the
two headers that matters, valid and not, runs through both middlewares with each
exchange and with each of ``request_id`` and ``trace_context`` on and off: what the
response says, what the request's context holds while the app runs, and what a
candidate exemplar stores must be the same.
"""

from __future__ import annotations

import asyncio
import io
import re
from typing import Any

import pytest
from werkzeug.test import create_environ

import instrument
from instrument.adapters import asgi, wsgi
from instrument.core import exemplars
from instrument.core.context import READERS, current
from instrument.core.runtime import runtime

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE = TP[3:35]
_TP_FORM = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

#: (traceparent, x-request-id) an incoming request carries; None: the header is absent
CASES: list[tuple[str | None, str | None]] = [
    (None, None),
    (TP, None),
    (TP, "given-1"),
    (TP, ""),  # an empty id: WSGI falls back to the trace id, ASGI checks it (as the twins do)
    (TP, "bad id!"),  # refused: a fresh one
    (None, "x" * 129),  # too long: a fresh one
    (TP.upper(), None),  # not lowercase hex
    ("00-" + "0" * 32 + TP[35:], None),  # all-zero trace id
    (TP[:36] + "0" * 16 + "-01", None),  # all-zero span id
    ("01-" + TP[3:] + "-what-comes-later", None),  # a later version: read as 00
    ("ff" + TP[2:], None),  # version ff is refused
    (TP[:-1], None),  # 54 characters
    (TP + "0", None),  # 56
    (TP[:10] + "é" + TP[11:], None),  # not ASCII
    ("", None),
]
SETTINGS = [(True, True), (True, False), (False, True), (False, False)]


def _norm(name: str, value: str, given: set[str]) -> Any:
    """A header value with what differs run to run (minted ids, span ids) cut away."""
    name = name.lower()
    if name == "x-request-id":
        return value if value in given else "minted"
    if name == "traceparent":
        assert _TP_FORM.fullmatch(value), value
        return value[:36] if value[3:35] == TRACE else "a trace of its own"
    return value


def _given(tp: str | None, rid: str | None) -> set[str]:
    return {v for v in (rid, TRACE if tp else None) if v}


def _wsgi_run(native: bool, tp: str | None, rid: str | None) -> tuple[Any, Any, Any]:
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ex = current.get()
        seen.append(None if ex is None else (ex.rid, ex.traceparent()))
        start_response("500 Oops", [("Content-Type", "text/plain")])
        return [b"x"]

    mw = wsgi.InstrumentMiddleware(app)
    assert mw._native is (native and wsgi._Native is not None)
    environ = create_environ("/p")
    if tp is not None:
        environ["HTTP_TRACEPARENT"] = tp
    if rid is not None:
        environ["HTTP_X_REQUEST_ID"] = rid
    environ["wsgi.input"] = io.BytesIO(b"")
    told: list[Any] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        told.extend(headers)
        return len

    body = mw(environ, start_response)
    list(body)
    body.close()
    return told, seen, runtime.recorder.drain(100)


def _asgi_run(native: bool, tp: str | None, rid: str | None) -> tuple[Any, Any, Any]:
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ex = current.get()
        seen.append(None if ex is None else (ex.rid, ex.traceparent()))
        await send({"type": "http.response.start", "status": 500,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"x"})

    mw = asgi.InstrumentMiddleware(app)
    assert mw._native is (native and asgi._Native is not None)
    headers = [(b"host", b"a")]
    if tp is not None:
        headers.append((b"traceparent", tp.encode()))
    if rid is not None:
        headers.append((b"x-request-id", rid.encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/p", "raw_path": b"/p",
             "root_path": "", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 80)}
    told: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            told.extend((k.decode(), v.decode()) for k, v in message["headers"])

    asyncio.run(mw(scope, receive, send))
    return told, seen, runtime.recorder.drain(100)


def _compare(run: Any, tp: str | None, rid: str | None, request_id: bool,
             trace_context: bool) -> list[Any]:
    given = _given(tp, rid)
    out = []
    for native in (True, False):
        instrument.configure(flush_interval=3600, native=native, request_id=request_id,
                             trace_context=trace_context)
        saved = exemplars.UNTIL[0], READERS[0]
        exemplars.UNTIL[0] = 0.0  # every request a candidate: its details are stored
        READERS[0] = True  # make each request current, as instrument.logs does
        try:
            told, seen, samples = run(native, tp, rid)
        finally:
            exemplars.UNTIL[0], READERS[0] = saved
        (sample,) = [s for s in samples if s[0] == "http"]
        disc = sample[-1]
        stored_tp = disc[-1].decode() if isinstance(disc[-1], bytes) else disc[-1]
        out.append((
            [(k.lower(), _norm(k, v, given)) for k, v in told],
            [None if s is None else (_norm("x-request-id", s[0], given) if s[0] else s[0],
                                     s[1] and _norm("traceparent", s[1], given))
             for s in seen],
            _norm("x-request-id", disc[1], given) if disc[1] else disc[1],
            stored_tp and _norm("traceparent", stored_tp, given),
        ))
    return out


@pytest.mark.parametrize(("request_id", "trace_context"), SETTINGS,
                         ids=["both", "id-only", "trace-only", "neither"])
@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
def test_the_compiled_ids_step_answers_as_the_twin(adapter: str, request_id: bool,
                                                    trace_context: bool) -> None:
    run = _wsgi_run if adapter == "wsgi" else _asgi_run
    for tp, rid in CASES:
        compiled, twin = _compare(run, tp, rid, request_id, trace_context)
        assert compiled == twin, (tp, rid)


def test_the_ids_step_continues_the_callers_trace_and_takes_its_id() -> None:
    """Not only the same as the twin: right. The caller's trace and id come back."""
    for run in (_wsgi_run, _asgi_run):
        headers, seen, rid, tp = _compare(run, TP, None, True, True)[0]
        assert dict(headers)["x-request-id"] == TRACE  # the trace id serves as the id
        assert dict(headers)["traceparent"] == TP[:36]
        assert seen == [(TRACE, TP[:36])] and rid == TRACE and tp == TP[:36]
        headers, seen, rid, tp = _compare(run, TP, "given-1", True, True)[0]
        assert dict(headers)["x-request-id"] == "given-1"
        headers, _, _, _ = _compare(run, "ff" + TP[2:], None, True, True)[0]
        assert dict(headers)["traceparent"] == "a trace of its own"
        assert dict(headers)["x-request-id"] == "minted"
        headers, seen, rid, tp = _compare(run, TP, None, False, False)[0]
        assert [k for k, _ in headers] == ["content-type"] and seen == [None]
