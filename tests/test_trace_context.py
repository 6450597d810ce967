"""W3C trace context: strict validation, continuation through WSGI, ASGI, requests and logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from fastapi import FastAPI
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import instrument
import instrument.requests as instrument_requests
from instrument import asgi, wsgi
from instrument.core import trace
from instrument.fastapi import instrument_app
from instrument.flask import Instrument
from instrument.logs import get_request_id, get_traceparent, request_context, setup_logging
from instrument.testing import MemoryBackend
from instrument.types import StartResponse, WSGIEnviron
from tests.servers import uvicorn_server, werkzeug_server

TP = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CALLER_TRACE, CALLER_SPAN = CALLER[3:35], CALLER[36:52]


def echo_wsgi(environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
    body = f"{get_request_id()} {get_traceparent()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def echo_asgi(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"{get_request_id()} {get_traceparent()}")


def starlette_app() -> Starlette:
    app = Starlette(routes=[Route("/echo", echo_asgi)])
    app.add_middleware(asgi.InstrumentMiddleware)
    return app


@pytest.fixture(params=["wsgi", "asgi"])
def url(request: pytest.FixtureRequest, memory: MemoryBackend) -> Iterator[str]:
    """The echo app behind the kit: WSGI under werkzeug, ASGI (Starlette) under uvicorn."""
    if request.param == "wsgi":
        with werkzeug_server(wsgi.InstrumentMiddleware(echo_wsgi)) as base:
            yield base
    else:
        with uvicorn_server(starlette_app()) as base:
            yield base


# -- the rules of the specification ----------------------------------------------------
@pytest.mark.parametrize("value", [
    CALLER,
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",  # not sampled
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later-fields",  # a later version
    "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09",
])
def test_valid_traceparents_are_read(value: str) -> None:
    """Version 00 exactly, or a later version whose first four fields are well formed."""
    parsed = trace.parse(value)
    assert parsed is not None and parsed[:2] == (CALLER_TRACE, CALLER_SPAN)
    assert trace.parse(value.encode()) == parsed
    assert parsed[2] == value[53:55]


@pytest.mark.parametrize("value", [
    "", "00", "garbage",
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # uppercase hex
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # 00 has four fields
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",  # short span id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  # short flags
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",  # not hex
    "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",  # not dashes
    " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # padded
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n",
    "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-\u0661\u0662",  # non-ASCII digits
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" + "-x" * 300,  # over 512
])
def test_malformed_traceparents_are_refused(value: str) -> None:
    """Wrong version, lengths, case, separators or zero ids: refused, and a fresh trace begins."""
    assert trace.parse(value) is None
    own = trace.continue_str(value)
    assert TP.fullmatch(own) and own[3:35] != CALLER_TRACE


def test_a_continued_trace_keeps_trace_and_flags_and_gets_a_new_span() -> None:
    for flags in ("00", "01"):
        caller = CALLER[:53] + flags
        spans = {trace.continue_str(caller)[36:52] for _ in range(500)}
        own = trace.continue_str(caller)
        assert own[:36] == caller[:36] and own[52:] == caller[52:] and TP.fullmatch(own)
        assert len(spans) == 500 and CALLER_SPAN not in spans
        assert trace.continue_bytes(caller.encode()).decode()[:36] == caller[:36]


def test_fresh_traces_are_unique_and_well_formed() -> None:
    trace.use()
    seen = {trace.fresh() for _ in range(5000)}
    assert len(seen) == 5000 and all(TP.fullmatch(v) for v in seen)
    assert all(trace.parse(v) is not None for v in seen)


@pytest.mark.parametrize("value,kept", [
    ("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", True), ("", False),
    ("a=" + "x" * 600, False), ("a=1\r\nSet-Cookie: x", False), ("caf\u00e9=1", False),
])
def test_tracestate_is_passed_on_only_when_safe(value: str, kept: bool) -> None:
    assert trace.tracestate(value) == (value if kept else None)


def test_a_forked_child_mints_its_own_traces() -> None:
    """The ids minted ahead are dropped in a child, so two workers never share a trace id."""
    trace.use()
    parent_pool = set(trace.TRACES)
    assert parent_pool
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running pytest's teardown
        try:
            os.write(write_fd, f"{len(trace.TRACES)} {trace.fresh()}".encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    left, minted = os.read(read_fd, 256).decode().split()
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert left == "0" and TP.fullmatch(minted) and minted not in parent_pool


# -- through the middleware ---------------------------------------------------------
def test_an_incoming_trace_is_continued_and_announced(url: str) -> None:
    """Same trace id and flags back in ``traceparent``, a new span id; it is the request id."""
    r = requests.get(url + "/echo", headers={"traceparent": CALLER}, timeout=10)
    own = r.headers["traceparent"]
    assert TP.fullmatch(own) and own[3:35] == CALLER_TRACE and own[36:52] != CALLER_SPAN
    assert own[53:] == "01"
    assert r.headers["X-Request-ID"] == CALLER_TRACE
    assert r.text == f"{CALLER_TRACE} {own}"  # the handler sees the same span


def test_an_explicit_request_id_wins_over_the_trace_id(url: str) -> None:
    r = requests.get(url + "/echo", headers={"traceparent": CALLER, "X-Request-ID": "caller-1"},
                     timeout=10)
    assert r.headers["X-Request-ID"] == "caller-1"
    assert r.headers["traceparent"][3:35] == CALLER_TRACE


def test_without_a_header_a_trace_starts_when_asked_and_is_not_announced(url: str) -> None:
    r = requests.get(url + "/echo", timeout=10)
    assert "traceparent" not in r.headers
    rid, own = r.text.split()
    assert TP.fullmatch(own) and rid == r.headers["X-Request-ID"] != own[3:35]


def test_a_malformed_header_starts_a_new_trace(url: str) -> None:
    bad = CALLER.upper()
    r = requests.get(url + "/echo", headers={"traceparent": bad}, timeout=10)
    assert r.status_code == 200
    own = r.headers["traceparent"]
    assert TP.fullmatch(own) and own[3:35] != CALLER_TRACE
    assert r.headers["X-Request-ID"] != own[3:35]  # a new trace is not taken as a caller's id


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_trace_context_switched_off(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """INSTRUMENT_TRACE_CONTEXT=false: no header back, the trace id is not the request id."""
    monkeypatch.setenv("INSTRUMENT_TRACE_CONTEXT", "false")
    instrument.configure(backends=[MemoryBackend()])
    app: Any = wsgi.InstrumentMiddleware(echo_wsgi) if kind == "wsgi" else starlette_app()
    server = werkzeug_server if kind == "wsgi" else uvicorn_server
    with server(app) as base:
        r = requests.get(base + "/echo", headers={"traceparent": CALLER}, timeout=10)
    assert "traceparent" not in r.headers
    rid, own = r.text.split()
    assert own == "None" and rid == r.headers["X-Request-ID"] != CALLER_TRACE


def test_switched_off_in_code(memory: MemoryBackend) -> None:
    instrument.configure(backends=[MemoryBackend()], trace_context=False)
    with request_context(traceparent=CALLER) as rid:
        assert get_traceparent() is None and rid != CALLER_TRACE


def _wsgi_call(app: Any, value: str) -> tuple[str, list[tuple[str, str]], bytes]:
    seen: list[Any] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/echo", "SERVER_NAME": "t",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http", "HTTP_TRACEPARENT": value}
    result = app(environ, lambda status, headers, exc_info=None: seen.append((status, headers)))
    body = b"".join(result)
    result.close()
    return seen[0][0], seen[0][1], body


def _asgi_call(app: Any, value: bytes) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/echo", "raw_path": b"/echo",
             "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80), "headers": [(b"host", b"t"), (b"traceparent", value)]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


# Anything a header could carry (WSGI gives header values as latin-1 text, PEP 3333):
# random text, near misses of a valid value, random bytes.
_NEAR = st.builds(lambda i, c: CALLER[:i] + c + CALLER[i + 1:],
                  st.integers(0, len(CALLER) - 1), st.characters(codec="latin-1"))
_HEADERS = st.one_of(st.text(st.characters(codec="latin-1"), max_size=80), _NEAR,
                     st.binary(max_size=80).map(lambda b: b.decode("latin-1")))


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=_HEADERS)
def test_a_thousand_malformed_traceparents_are_ignored_without_error(value: str) -> None:
    """Hypothesis: whatever comes in ``traceparent``, both middlewares answer 200, with a valid
    trace that continues the caller's exactly when the caller's was valid."""
    instrument.configure(backends=[MemoryBackend()], flush_interval=3600)
    caller = trace.parse(value)
    status, headers, body = _wsgi_call(wsgi.InstrumentMiddleware(echo_wsgi), value)
    assert status == "200 OK"
    [own] = [v for k, v in headers if k == "traceparent"]
    assert TP.fullmatch(own) and body.decode().split()[1] == own
    assert (own[3:35] == value[3:35]) == (caller is not None)
    sent = _asgi_call(starlette_app(), value.encode("latin-1"))
    assert sent[0]["status"] == 200
    [own_b] = [v for k, v in sent[0]["headers"] if k == b"traceparent"]
    assert TP.fullmatch(own_b.decode()) and sent[1]["body"].split()[1] == own_b
    assert (own_b.decode()[3:35] == value[3:35]) == (caller is not None)
    instrument.shutdown()


# -- outgoing calls, jobs, logs --------------------------------------------------------
@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A real HTTP server that keeps the headers of every request it gets."""
    got: list[dict[str, str]] = []

    def app(environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
        got.append({k[5:].lower(): v for k, v in environ.items() if k.startswith("HTTP_")})
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    with werkzeug_server(app) as base:
        yield base, got


def test_requests_sends_the_trace_on_with_a_new_span(
        memory: MemoryBackend, receiver: tuple[str, list[dict[str, str]]]) -> None:
    base, got = receiver
    instrument_requests.instrument_all_sessions()
    try:
        with request_context(traceparent=CALLER, tracestate="rojo=00f067aa0ba902b7") as rid:
            mine = get_traceparent()
            requests.get(base + "/a", timeout=10)
            requests.get(base + "/b", headers={"traceparent": "caller-set"}, timeout=10)
        requests.get(base + "/c", timeout=10)  # outside any context: nothing to send on
    finally:
        instrument_requests.uninstrument_all_sessions()
    assert mine is not None and rid == CALLER_TRACE
    first, second, third = got
    sent = first["traceparent"]
    assert sent[:36] == mine[:36] and sent[36:52] not in (mine[36:52], CALLER_SPAN)
    assert first["tracestate"] == "rojo=00f067aa0ba902b7" and first["x_request_id"] == rid
    assert second["traceparent"] == "caller-set"  # the caller's own header is left alone
    assert "traceparent" not in third and "x_request_id" not in third


def test_a_job_continues_the_trace_of_the_message_that_started_it(memory: MemoryBackend) -> None:
    with request_context(traceparent=CALLER) as rid:
        mine = get_traceparent()
    assert rid == CALLER_TRACE and mine is not None and mine[3:35] == CALLER_TRACE
    with request_context("job-1", traceparent="not-a-traceparent") as rid:
        other = get_traceparent()
    assert rid == "job-1" and other is not None and other[3:35] != CALLER_TRACE
    assert get_traceparent() is None


def test_timed_functions_log_under_the_request_trace(url: str) -> None:
    """Log lines written inside the request (and a @timed call in it) carry its trace ids."""
    stream = io.StringIO()
    setup_logging(stream=stream, store=False, logger="trace-test")

    @instrument.timed
    def work() -> None:
        logging.getLogger("trace-test").info("inside")

    with request_context(traceparent=CALLER):
        work()
        mine = get_traceparent()
    [line] = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert mine is not None
    assert line["trace_id"] == CALLER_TRACE and line["span_id"] == mine[36:52]
    assert line["request_id"] == CALLER_TRACE


def test_a_chain_flask_requests_fastapi_keeps_one_trace(memory: MemoryBackend) -> None:
    """Client -> Flask (werkzeug) -> requests -> FastAPI (uvicorn): one trace id in both apps'
    JSON log lines, each app with its own span, the request id carried along."""
    stream = io.StringIO()
    lock = threading.Lock()

    class Locked(io.StringIO):
        def write(self, s: str) -> int:
            with lock:
                return stream.write(s)

    setup_logging(stream=Locked(), store=False, logger="chain")
    log = logging.getLogger("chain")
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        log.info("fastapi handles", extra={"app": "fastapi"})
        return {"id": item_id}

    instrument_app(api)
    front = Flask("front")
    Instrument(front)
    instrument_requests.instrument_all_sessions()
    try:
        with uvicorn_server(api) as api_url:
            @front.get("/orders/<int:order_id>")
            def order(order_id: int) -> dict[str, Any]:
                log.info("flask handles", extra={"app": "flask"})
                return requests.get(f"{api_url}/items/{order_id}", timeout=10).json()

            with werkzeug_server(front) as front_url:
                r = httpx.get(front_url + "/orders/7", headers={"traceparent": CALLER})
    finally:
        instrument_requests.uninstrument_all_sessions()
    assert r.status_code == 200 and r.json() == {"id": 7}
    lines = {x["app"]: x for x in map(json.loads, stream.getvalue().splitlines())}
    flask_line, api_line = lines["flask"], lines["fastapi"]
    assert flask_line["trace_id"] == api_line["trace_id"] == CALLER_TRACE
    assert len({flask_line["span_id"], api_line["span_id"], CALLER_SPAN}) == 3
    assert flask_line["request_id"] == api_line["request_id"] == CALLER_TRACE
    assert flask_line["route"] == "/orders/<int:order_id>"
    assert api_line["route"] == "/items/{item_id}"
    assert r.headers["traceparent"][36:52] == flask_line["span_id"]
