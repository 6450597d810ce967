"""The pure ASGI middleware on Starlette under uvicorn, and its pass-through guarantees."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.sync.client import connect

import instrument
from instrument.asgi import InstrumentMiddleware
from instrument.testing import FailingBackend
from tests.servers import query, row_count, settled_count, uvicorn_server, wait_until

pytestmark = pytest.mark.usefixtures("both_exchanges")  # compiled and pure-Python exchange

STREAM_CHUNKS, STREAM_CHUNK, STREAM_PAUSE = 5, b"z" * 2500, 0.08
BACKGROUND_SLEEP = 0.5
FAILURE = ArithmeticError("handler failed")


def http_scope(path: str, method: str = "GET") -> dict[str, Any]:
    """A minimal ASGI 3 HTTP scope, as a server would build it."""
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": method, "scheme": "http", "path": path,
            "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": [],
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}


def make_app(events: dict[str, threading.Event]) -> Starlette:
    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"]})

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{request.path_params['name']}")

    async def later() -> None:
        await asyncio.sleep(BACKGROUND_SLEEP)
        events["background"].set()

    async def background(request: Request) -> PlainTextResponse:
        return PlainTextResponse("queued", background=BackgroundTask(later))

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(STREAM_CHUNKS):
                if i:
                    await asyncio.sleep(STREAM_PAUSE)
                yield STREAM_CHUNK

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def upload(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"received": len(body), "te": request.headers.get("transfer-encoding")})

    async def boom(request: Request) -> PlainTextResponse:
        raise FAILURE

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text((await websocket.receive_text()).upper())
        await websocket.close()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events["startup"].set()
        yield
        events["shutdown"].set()

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        """A mounted ASGI app with no router of its own, like StaticFiles."""
        await PlainTextResponse(scope["path"])(scope, receive, send)

    sub = Starlette(routes=[Route("/hello/{name}", hello)])
    app = Starlette(routes=[
        Route("/items/{item_id:int}", item),
        Route("/background", background),
        Route("/stream", stream),
        Route("/upload", upload, methods=["POST"]),
        Route("/boom", boom),
        WebSocketRoute("/ws", echo),
        Mount("/mnt/{ver}", app=sub),
        Mount("/raw/{ver}", app=raw),
    ], lifespan=lifespan)
    app.add_middleware(InstrumentMiddleware)
    return app


@pytest.fixture
def events() -> dict[str, threading.Event]:
    return {name: threading.Event() for name in ("startup", "shutdown", "background")}


@pytest.fixture
def client(events: dict[str, threading.Event]) -> Iterator[httpx.Client]:
    with uvicorn_server(make_app(events)) as url, httpx.Client(base_url=url) as c:
        yield c


def test_templates_mounts_and_unmatched(client: httpx.Client, db_path: Path) -> None:
    """Routes are named by template, Mount path params included; 404s, even in a Mount, fold."""
    for path in ("/items/1", "/items/22", "/mnt/v1/hello/bob", "/mnt/v2/hello/al",
                 "/raw/3/a.css", "/raw/4/b/c.js"):
        assert client.get(path).status_code == 200
    for path in ("/missing", "/items/x", "/mnt/v1/nothing-here"):
        assert client.get(path).status_code == 404
    assert settled_count(db_path, 9) == 9
    rows = query(db_path, "SELECT endpoint, method, status_code, COUNT(*) FROM api_metrics"
                          " GROUP BY 1, 2, 3 ORDER BY 1")
    assert rows == [("/items/{item_id}", "GET", 200, 2),
                    ("/mnt/{ver}/hello/{name}", "GET", 200, 2),
                    ("/raw/{ver}/{path}", "GET", 200, 2),
                    ("__unmatched__", "GET", 404, 3)]


def test_excluded_paths_are_not_recorded(db_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         events: dict[str, threading.Event]) -> None:
    """INSTRUMENT_EXCLUDE_PATHS applies to ASGI apps too, exact paths and prefixes."""
    monkeypatch.setenv("INSTRUMENT_EXCLUDE_PATHS", "/items/1,/mnt/*")
    with uvicorn_server(make_app(events)) as url, httpx.Client(base_url=url) as c:
        for path in ("/items/1", "/mnt/v1/hello/x", "/items/2"):
            assert c.get(path).status_code == 200
    assert settled_count(db_path, 1) == 1
    assert query(db_path, "SELECT endpoint FROM api_metrics") == [("/items/{item_id}",)]


def test_background_task_not_counted(client: httpx.Client, db_path: Path,
                                     events: dict[str, threading.Event]) -> None:
    """A background task that sleeps after the response does not lengthen the request."""
    assert client.get("/background").text == "queued"
    assert events["background"].wait(5)
    assert settled_count(db_path, 1) == 1
    [(ms, status)] = query(db_path, "SELECT response_time_ms, status_code FROM api_metrics")
    assert status == 200
    assert ms < BACKGROUND_SLEEP * 1000 / 2


def test_streaming_response_timed_to_its_end(client: httpx.Client, db_path: Path) -> None:
    """A streamed response lasts until its last chunk, and its bytes are summed as they flow."""
    body = client.get("/stream").content
    assert body == STREAM_CHUNK * STREAM_CHUNKS
    assert settled_count(db_path, 1) == 1
    [(ms, ttfb, size, disconnected)] = query(
        db_path, "SELECT response_time_ms, ttfb_ms, response_size_bytes, client_disconnected"
                 " FROM api_metrics")
    stream_ms = (STREAM_CHUNKS - 1) * STREAM_PAUSE * 1000
    assert ms >= stream_ms
    assert ttfb < stream_ms / 4
    assert size == len(body)
    assert disconnected == 0


def test_request_bytes_plain_and_chunked(client: httpx.Client, db_path: Path) -> None:
    """POST bodies are counted as received, with or without Content-Length."""
    parts = [b"1" * 30_000, b"2" * 3, b"3" * 70_001]
    chunked = client.post("/upload", content=iter(parts))
    assert chunked.json() == {"received": 100_004, "te": "chunked"}
    assert client.post("/upload", content=b"q" * 4321).json() == {"received": 4321, "te": None}
    assert settled_count(db_path, 2) == 2
    sizes = sorted(r[0] for r in query(db_path, "SELECT request_size_bytes FROM api_metrics"))
    assert sizes == [4321, 100_004]
    assert query(db_path, "SELECT SUM(request_bytes) FROM metric_rollups") == [(104_325,)]


def test_handler_exception_recorded_under_server(client: httpx.Client, db_path: Path) -> None:
    """Behind uvicorn a crashing handler is answered 500 and recorded as a 500 naming the type."""
    assert client.get("/boom").status_code == 500
    assert settled_count(db_path, 1) == 1
    assert query(db_path, "SELECT endpoint, status_code, error_count, exception FROM api_metrics"
                 ) == [("/boom", 500, 1, "ArithmeticError")]


def test_handler_exception_propagates_unchanged(db_path: Path,
                                                events: dict[str, threading.Event]) -> None:
    """The exception leaving the app is the handler's own object, not a copy or a wrapper."""
    app = make_app(events)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(ArithmeticError) as caught:
        asyncio.run(app(http_scope("/boom"), receive, send))
    assert caught.value is FAILURE
    assert any(entry.name == "boom" for entry in caught.traceback)
    assert sent[0]["status"] == 500
    assert settled_count(db_path, 1) == 1
    assert query(db_path, "SELECT status_code, exception FROM api_metrics") == [
        (500, "ArithmeticError")]


def test_pure_middleware_reraises_same_object(db_path: Path) -> None:
    """Wrapped around a bare ASGI app, the middleware re-raises what the app raised."""
    error = BufferError("bare")

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise error

    async def send(message: Any) -> None:
        pass

    with pytest.raises(BufferError) as caught:
        asyncio.run(InstrumentMiddleware(bare)(http_scope("/bare", "PUT"), None, send))
    assert caught.value is error
    assert settled_count(db_path, 1) == 1
    assert query(db_path, "SELECT endpoint, method, status_code, exception FROM api_metrics"
                 ) == [("/bare", "PUT", 500, "BufferError")]


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
def test_other_scopes_pass_through_untouched(scope_type: str, db_path: Path) -> None:
    """Non-HTTP scopes reach the app with the very same scope, receive and send objects."""
    seen: list[tuple[Any, Any, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> dict[str, Any]:
        return {"type": f"{scope_type}.connect"}

    async def send(message: Any) -> None:
        pass

    scope = {"type": scope_type, "path": "/ws", "asgi": {"version": "3.0"}}
    snapshot = dict(scope)
    asyncio.run(InstrumentMiddleware(inner)(scope, receive, send))
    assert len(seen) == 1
    assert seen[0][0] is scope and seen[0][1] is receive
    # lifespan's send is wrapped to flush before "lifespan.shutdown.complete" goes out
    assert seen[0][2] is send if scope_type == "websocket" else seen[0][2] is not send
    assert scope == snapshot
    assert instrument.flush(2.0)
    assert row_count(db_path) == 0


def test_websocket_and_lifespan_through_starlette(db_path: Path,
                                                  events: dict[str, threading.Event]) -> None:
    """A websocket session and the lifespan events work through the middleware and add no rows."""
    with uvicorn_server(make_app(events)) as url:
        assert events["startup"].is_set()
        with connect(url.replace("http://", "ws://") + "/ws", open_timeout=5) as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "HI"
        assert httpx.get(f"{url}/items/5").status_code == 200
        assert not events["shutdown"].is_set()
    assert events["shutdown"].is_set()
    assert settled_count(db_path, 1) == 1
    assert query(db_path, "SELECT endpoint FROM api_metrics") == [("/items/{item_id}",)]


def test_kill_switch_leaves_the_app_alone(db_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          events: dict[str, threading.Event]) -> None:
    """INSTRUMENT_ENABLED=false: the constructor returns the app and nothing is recorded."""
    monkeypatch.setenv("INSTRUMENT_ENABLED", "false")

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        pass

    assert InstrumentMiddleware(bare) is bare
    app = make_app(events)
    with uvicorn_server(app) as url:
        assert httpx.get(f"{url}/items/5").status_code == 200
    node, layers = app.middleware_stack, []
    while node is not None:
        layers.append(type(node).__name__)
        node = getattr(node, "app", None)
    assert "InstrumentMiddleware" not in layers
    assert instrument.flush(2.0)
    assert not db_path.exists() or row_count(db_path) == 0


def test_failing_backend_does_not_break_requests(events: dict[str, threading.Event]) -> None:
    """While the backend raises, requests are answered; its retries then deliver every row."""
    backend = FailingBackend(failures=2)
    instrument.configure(backends=[backend], flush_interval=0.05)
    with uvicorn_server(make_app(events)) as url, httpx.Client(base_url=url) as c:
        assert [c.get(f"/items/{i}").status_code for i in range(20)] == [200] * 20
    wait_until(lambda: instrument.flush(5.0) and len(backend.requests) >= 20, what="20 rows")
    assert len(backend.requests) == 20
    assert backend.attempts == 2 + len(backend.batches)
    assert backend.get_sample_value("http", "/items/{item_id}") == 20
    [health] = instrument.stats()["backends"]
    assert health["healthy"] and health["errors_total"] == 2
