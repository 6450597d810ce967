"""Request ids: validated or minted by the WSGI and ASGI middleware, echoed, and never mixed up."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import instrument
from instrument import asgi, wsgi
from instrument.core.context import MAX_ID_LENGTH, incoming_id, new_id, valid_id
from instrument.logs import get_request_id
from instrument.testing import MemoryBackend
from instrument.types import StartResponse, WSGIEnviron
from tests.servers import uvicorn_server, werkzeug_server

FRESH = re.compile(r"[0-9a-f]{12}-[0-9a-f]+")
MALICIOUS = [
    "x" * (MAX_ID_LENGTH + 1),
    "abc\r\nSet-Cookie: session=stolen",
    "abc\nX-Injected: 1",
    "abc\x00def",
    "abc\x1bdef",
    "with space",
    'quote"d',
    "caf\u00e9",
    "",
]


def echo_wsgi(environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
    body = (get_request_id() or "-").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def echo_asgi(request: Request) -> PlainTextResponse:
    return PlainTextResponse(get_request_id() or "-")


def raw_request(base: str, header_value: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send one GET with the given X-Request-ID bytes over a plain socket (no client checks)."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Request-ID: " + header_value
                     + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:])]
    return int(lines[0].split()[1]), headers, body


def ids_in(headers: list[tuple[str, str]]) -> list[str]:
    return [v for k, v in headers if k.lower() == "x-request-id"]


@pytest.fixture
def wsgi_url(memory: MemoryBackend) -> Iterator[str]:
    with werkzeug_server(wsgi.InstrumentMiddleware(echo_wsgi)) as url:
        yield url


@pytest.fixture
def asgi_url(memory: MemoryBackend) -> Iterator[str]:
    app = Starlette(routes=[Route("/echo", echo_asgi)])
    app.add_middleware(asgi.InstrumentMiddleware)
    with uvicorn_server(app) as url:
        yield url


# -- the id rules ------------------------------------------------------------------
@pytest.mark.parametrize("good", ["0f8fad5b-d9cb-469f-a165-70867728950e", "a", "x" * 128,
                                  "Root=1-5759e988-bd862e3fe1be46a994272793", "abc_DEF.1:2+3/4@5"])
def test_valid_ids_are_kept(good: str) -> None:
    """An id of up to 128 safe characters passes through unchanged, as text or bytes."""
    assert valid_id(good) and valid_id(good.encode())
    assert incoming_id(good) == good
    assert incoming_id(good.encode()) == good


@pytest.mark.parametrize("bad", MALICIOUS)
def test_malicious_ids_are_replaced(bad: str) -> None:
    """Too long, control characters, CR/LF, spaces, quotes or non-ASCII give a fresh id."""
    assert not valid_id(bad)
    assert FRESH.fullmatch(incoming_id(bad))
    assert FRESH.fullmatch(incoming_id(bad.encode("utf-8")))


def test_fresh_ids_are_unique_across_threads() -> None:
    """Ids minted concurrently from many threads never repeat."""
    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [new_id() for _ in range(5000)], range(8)))
    ids = [i for b in batches for i in b]
    assert len(set(ids)) == len(ids) == 40000


def test_forked_child_mints_ids_with_a_new_prefix() -> None:
    """A forked worker gets its own id prefix, so two workers never hand out the same id."""
    parent = new_id()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report one id and leave without running pytest's teardown
        try:
            os.write(write_fd, new_id().encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    child = os.read(read_fd, 256).decode()
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert FRESH.fullmatch(child)
    assert child.split("-")[0] != parent.split("-")[0]


# -- WSGI under werkzeug's threaded server ----------------------------------------------
def test_wsgi_creates_an_id_and_returns_it(wsgi_url: str) -> None:
    """Without an incoming id the handler sees a fresh one and the response carries it."""
    r = requests.get(wsgi_url + "/echo", timeout=10)
    assert FRESH.fullmatch(r.headers["X-Request-ID"])
    assert r.text == r.headers["X-Request-ID"]


def test_wsgi_echoes_a_valid_incoming_id(wsgi_url: str) -> None:
    """A valid X-Request-ID from the caller is the handler's id and comes back unchanged."""
    r = requests.get(wsgi_url + "/echo", headers={"X-Request-ID": "caller-42"}, timeout=10)
    assert r.headers["X-Request-ID"] == "caller-42" == r.text


@pytest.mark.parametrize("bad", [b"x" * 129, b"abc\x01def", b"abc\tdef", b"caf\xc3\xa9"])
def test_wsgi_replaces_a_malicious_id(wsgi_url: str, bad: bytes) -> None:
    """An id with control characters, tabs, non-ASCII or excess length is replaced, once."""
    status, headers, body = raw_request(wsgi_url, bad)
    assert status == 200
    [rid] = ids_in(headers)
    assert FRESH.fullmatch(rid) and body.decode() == rid


def test_wsgi_crlf_in_id_cannot_inject_a_header(memory: MemoryBackend) -> None:
    """A CR/LF smuggled into the environ value never reaches the response headers."""
    app = wsgi.InstrumentMiddleware(echo_wsgi)
    seen: list[Any] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/echo", "SERVER_NAME": "t",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http",
               "HTTP_X_REQUEST_ID": "abc\r\nSet-Cookie: session=stolen"}
    result = app(environ, lambda status, headers, exc_info=None: seen.append(headers))
    body = b"".join(result)
    result.close()  # type: ignore[attr-defined]
    [headers] = seen
    [rid] = [v for k, v in headers if k.lower() == "x-request-id"]
    assert FRESH.fullmatch(rid) and body.decode() == rid
    assert all("\r" not in v and "\n" not in v for _, v in headers)
    assert get_request_id() is None  # closed: the id does not leak into the next work


def test_wsgi_threads_never_mix_ids(memory: MemoryBackend) -> None:
    """Sixteen requests held in flight together each see only their own id, start to end."""
    n = 16
    barrier = threading.Barrier(n, timeout=20)

    def app(environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
        first = get_request_id()
        barrier.wait()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{first} {get_request_id()}".encode()]

    with werkzeug_server(wsgi.InstrumentMiddleware(app)) as url, ThreadPoolExecutor(n) as pool:
        responses = list(pool.map(
            lambda i: requests.get(url, headers={"X-Request-ID": f"t-{i}"}, timeout=30), range(n)))
    for i, r in enumerate(responses):
        assert r.text == f"t-{i} t-{i}"
        assert r.headers["X-Request-ID"] == f"t-{i}"


def test_wsgi_request_id_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """INSTRUMENT_REQUEST_ID=false: no header is added and handlers see no id."""
    monkeypatch.setenv("INSTRUMENT_REQUEST_ID", "false")
    instrument.configure(backends=[MemoryBackend()])
    with werkzeug_server(wsgi.InstrumentMiddleware(echo_wsgi)) as url:
        r = requests.get(url + "/echo", headers={"X-Request-ID": "caller-1"}, timeout=10)
    assert "X-Request-ID" not in r.headers
    assert r.text == "-"


# -- ASGI under uvicorn ----------------------------------------------------------------
def test_asgi_creates_an_id_and_returns_it(asgi_url: str) -> None:
    """Without an incoming id the endpoint sees a fresh one and the response carries it."""
    r = httpx.get(asgi_url + "/echo")
    assert FRESH.fullmatch(r.headers["x-request-id"])
    assert r.text == r.headers["x-request-id"]


def test_asgi_echoes_a_valid_incoming_id(asgi_url: str) -> None:
    """A valid X-Request-ID from the caller is the endpoint's id and comes back unchanged."""
    r = httpx.get(asgi_url + "/echo", headers={"X-Request-ID": "caller-7"})
    assert r.headers.get_list("x-request-id") == ["caller-7"]
    assert r.text == "caller-7"


@pytest.mark.parametrize("bad", [b"x" * 129, b"abc\tdef", b"caf\xc3\xa9", b"a\"b"])
def test_asgi_replaces_a_malicious_id(asgi_url: str, bad: bytes) -> None:
    """An id with tabs, non-ASCII, quotes or excess length is replaced by a fresh one."""
    status, headers, body = raw_request(asgi_url, bad)
    assert status == 200
    [rid] = ids_in(headers)
    assert FRESH.fullmatch(rid) and body.decode() == rid


def test_asgi_crlf_in_id_cannot_inject_a_header(memory: MemoryBackend) -> None:
    """A CR/LF in the scope's header value is replaced before anything is sent."""
    app = Starlette(routes=[Route("/echo", echo_asgi)])
    app.add_middleware(asgi.InstrumentMiddleware)
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/echo", "raw_path": b"/echo",
             "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80),
             "headers": [(b"x-request-id", b"abc\r\nSet-Cookie: session=stolen")]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    [rid] = [v for k, v in sent[0]["headers"] if k == b"x-request-id"]
    assert FRESH.fullmatch(rid.decode())
    assert sent[1]["body"] == rid
    assert get_request_id() is None


@pytest.mark.parametrize("shape", [tuple, list])
def test_asgi_finds_the_incoming_id_among_headers_of_either_shape(
        memory: MemoryBackend, shape: Any) -> None:
    """The caller's id is found as the last of several headers, sent as tuples or as lists."""
    app = Starlette(routes=[Route("/echo", echo_asgi)])
    app.add_middleware(asgi.InstrumentMiddleware)
    sent: list[dict[str, Any]] = []
    pairs = [(b"host", b"t"), (b"x-request", b"near-miss"), (b"x-request-idx", b"longer"),
             (b"accept", b"*/*"), (b"x-request-id", b"caller-7")]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/echo", "raw_path": b"/echo",
             "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80), "headers": [shape(p) for p in pairs]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for headers, expected in ((scope["headers"], b"caller-7"), (scope["headers"][:-1], None)):
        sent.clear()
        asyncio.run(app(dict(scope, headers=headers), receive, send))
        [rid] = [v for k, v in sent[0]["headers"] if k == b"x-request-id"]
        assert sent[1]["body"] == rid
        if expected is None:
            assert FRESH.fullmatch(rid.decode())
        else:
            assert rid == expected


def test_asgi_tasks_never_mix_ids(memory: MemoryBackend) -> None:
    """Forty concurrent requests interleaved on one event loop each keep their own id."""
    n = 40
    state: dict[str, Any] = {"arrived": 0}

    async def endpoint(request: Request) -> PlainTextResponse:
        first = get_request_id()
        if "all" not in state:
            state["all"] = asyncio.Event()
        state["arrived"] += 1
        if state["arrived"] == n:
            state["all"].set()
        await asyncio.wait_for(state["all"].wait(), 20)
        await asyncio.sleep(0)
        return PlainTextResponse(f"{first} {get_request_id()}")

    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(asgi.InstrumentMiddleware)

    async def client(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as c:
            return await asyncio.gather(*(c.get("/", headers={"X-Request-ID": f"a-{i}"})
                                          for i in range(n)))

    with uvicorn_server(app) as url:
        responses = asyncio.run(client(url))
    for i, r in enumerate(responses):
        assert r.text == f"a-{i} a-{i}"
        assert r.headers["x-request-id"] == f"a-{i}"


def test_asgi_request_id_switched_off() -> None:
    """configure(request_id=False): no header is added and endpoints see no id."""
    instrument.configure(backends=[MemoryBackend()], request_id=False)
    app = Starlette(routes=[Route("/echo", echo_asgi)])
    app.add_middleware(asgi.InstrumentMiddleware)
    with uvicorn_server(app) as url:
        r = httpx.get(url + "/echo", headers={"X-Request-ID": "caller-1"})
    assert "x-request-id" not in r.headers
    assert r.text == "-"


def test_request_becomes_current_once_a_reader_is_imported(tmp_path: Any) -> None:
    """Before instrument.logs is imported the id is echoed but not made current; after, it is."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        import instrument
        from instrument.core import context as _context
        from instrument.wsgi import InstrumentMiddleware
        instrument.configure(metrics_db={str(tmp_path / "m.db")!r})
        seen = []
        def app(environ, start_response):
            ctx = _context.current.get()
            seen.append(None if ctx is None else ctx.describe()[0])
            start_response("200 OK", [])
            return [b"ok"]
        mw = InstrumentMiddleware(app)
        headers = {{}}
        def start_response(status, hs, exc_info=None):
            headers.update(hs)
        def call():
            body = mw({{"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}}, start_response)
            list(body)
            body.close()
            return headers["X-Request-ID"]
        first = call()
        assert "instrument.logs" not in sys.modules
        from instrument.logs import get_request_id
        second = call()
        assert seen == [None, second], (seen, first, second)
        assert first and first != second
        assert get_request_id() is None  # outside any request
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
