"""Outgoing ``requests`` calls against a real loopback server: recorded once, carrying the id."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

import instrument
from instrument import wsgi
from instrument.core.suppress import suppressed
from instrument.logs import request_context
from instrument.requests import (
    client_route,
    instrument_all_sessions,
    instrument_session,
    uninstrument_all_sessions,
)
from instrument.testing import MemoryBackend
from instrument.types import StartResponse, WSGIEnviron
from tests.servers import HOST, listening_socket, werkzeug_server

BODY = b'{"ok": true, "pad": "' + b"x" * 100 + b'"}'


class Upstream:
    """A loopback HTTP server that remembers the X-Request-ID of every request it got."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.seen.append((self.command, self.path, self.headers.get("X-Request-ID")))
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", "/users/9")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 503 if self.path.startswith("/fail") else 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)

            do_GET = do_POST = _answer

        sock = listening_socket()
        self.server = ThreadingHTTPServer((HOST, 0), Handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = sock
        self.host = f"{HOST}:{sock.getsockname()[1]}"
        self.url = f"http://{self.host}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def ids(self) -> list[str | None]:
        return [rid for _, _, rid in self.seen]


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    up.thread.start()
    try:
        yield up
    finally:
        up.server.shutdown()
        up.server.server_close()
        up.thread.join(5)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.fixture(autouse=True)
def _no_global_patch() -> Iterator[None]:
    yield
    uninstrument_all_sessions()


def client_calls(memory: MemoryBackend) -> list[dict[str, Any]]:
    assert instrument.flush(5.0)
    return [c for c in memory.calls if c["kind"] == "client"]


def test_call_is_recorded_under_host_and_template(memory: MemoryBackend, upstream: Upstream,
                                                  session: requests.Session) -> None:
    """A GET is one 'client' row named host + matching template, with status and bytes."""
    instrument_session(session, templates=["/users/{id}", "/files/{p:path}"])
    assert session.get(upstream.url + "/users/42", timeout=10).status_code == 200
    session.post(upstream.url + "/files/a/b.txt", data=b"12345", timeout=10)
    session.get(upstream.url + "/other", timeout=10)
    calls = client_calls(memory)
    assert [(c["name"], c["method"], c["status_code"], c["exception"]) for c in calls] == [
        (upstream.host + "/users/{id}", "GET", 200, None),
        (upstream.host + "/files/{p:path}", "POST", 200, None),
        (upstream.host, "GET", 200, None),
    ]
    assert all(c["duration_ms"] > 0 for c in calls)
    name = upstream.host + "/files/{p:path}"
    assert memory.get_sample_value("client", name, "request_bytes") == 5
    assert memory.get_sample_value("client", name, "response_bytes") == len(BODY)


def test_client_route_names_calls_in_its_block(memory: MemoryBackend, upstream: Upstream,
                                               session: requests.Session) -> None:
    """client_route() names the calls of its block, ahead of the session's templates."""
    instrument_session(session, templates=["/users/{id}"])
    with client_route("/users/{user_id}"):
        session.get(upstream.url + "/users/1", timeout=10)
    assert [c["name"] for c in client_calls(memory)] == [upstream.host + "/users/{user_id}"]


def test_server_errors_and_exceptions_are_recorded(memory: MemoryBackend, upstream: Upstream,
                                                   session: requests.Session) -> None:
    """A 503 counts as an error; a refused connection records its exception type and re-raises."""
    instrument_session(session)
    session.get(upstream.url + "/fail", timeout=10)
    closed = listening_socket()
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(requests.ConnectionError):
        session.get(f"http://{HOST}:{port}/x", timeout=10)
    calls = client_calls(memory)
    assert [(c["status_code"], c["exception"]) for c in calls] == [
        (503, None), (0, "ConnectionError")]
    assert memory.get_sample_value("client", upstream.host, "errors") == 1


def test_request_id_is_forwarded_only_inside_a_request(memory: MemoryBackend, upstream: Upstream,
                                                       session: requests.Session) -> None:
    """Inside a request context the id is sent on; outside none is; a caller's own is kept."""
    instrument_session(session)
    session.get(upstream.url + "/a", timeout=10)
    with request_context("ctx-1"):
        session.get(upstream.url + "/b", timeout=10)
        session.get(upstream.url + "/c", headers={"X-Request-ID": "explicit"}, timeout=10)
    assert upstream.ids() == [None, "ctx-1", "explicit"]


def test_redirects_are_one_call(memory: MemoryBackend, upstream: Upstream,
                                session: requests.Session) -> None:
    """A followed redirect is recorded once, under the first URL, with the final status."""
    instrument_session(session, templates=["/redirect"])
    with request_context("redir-1"):
        r = session.get(upstream.url + "/redirect", timeout=10)
    assert r.status_code == 200 and len(r.history) == 1
    assert [(c["name"], c["status_code"]) for c in client_calls(memory)] == [
        (upstream.host + "/redirect", 200)]
    assert upstream.ids() == ["redir-1", "redir-1"]


def test_kit_calls_under_the_suppress_flag_are_not_recorded(
        memory: MemoryBackend, upstream: Upstream, session: requests.Session) -> None:
    """The kit's own calls (alert channels, webhooks) are neither recorded nor tagged."""
    instrument_session(session)
    instrument_all_sessions()
    token = suppressed.set(True)
    try:
        with request_context("kit-1"):
            session.get(upstream.url + "/hook", timeout=10)
            requests.post(upstream.url + "/hook", json={"a": 1}, timeout=10)
    finally:
        suppressed.reset(token)
    assert client_calls(memory) == []
    assert upstream.ids() == [None, None]


def test_all_sessions_opt_in_and_out(memory: MemoryBackend, upstream: Upstream,
                                     session: requests.Session) -> None:
    """The opt-in covers requests.get and instrumented sessions once; opting out stops it."""
    original = requests.Session.send
    instrument_session(session)
    instrument_all_sessions(templates=["/users/{id}"])
    requests.get(upstream.url + "/users/5", timeout=10)
    session.get(upstream.url + "/users/6", timeout=10)
    uninstrument_all_sessions()
    assert requests.Session.send is original
    requests.get(upstream.url + "/users/7", timeout=10)
    assert [c["name"] for c in client_calls(memory)] == [
        upstream.host + "/users/{id}", upstream.host]


def test_call_from_a_served_request_carries_its_id(memory: MemoryBackend,
                                                   upstream: Upstream) -> None:
    """A WSGI app calling upstream forwards the id its own caller sent."""
    session = instrument_session(requests.Session())

    def app(environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
        r = session.get(upstream.url + "/users/3", timeout=10)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"upstream": r.status_code}).encode()]

    try:
        with werkzeug_server(wsgi.InstrumentMiddleware(app)) as url:
            r = requests.get(url + "/proxy", headers={"X-Request-ID": "edge-77"}, timeout=10)
    finally:
        session.close()
    assert r.json() == {"upstream": 200} and r.headers["X-Request-ID"] == "edge-77"
    assert upstream.ids() == ["edge-77"]
    assert [c["name"] for c in client_calls(memory)] == [upstream.host]
