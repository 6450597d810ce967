"""FastAPI under uvicorn with ``app.add_middleware(InstrumentMiddleware)``: names, time, bytes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, BackgroundTasks, FastAPI, Request
from fastapi.responses import StreamingResponse

from instrument.asgi import InstrumentMiddleware
from instrument.fastapi import instrument_app
from tests.servers import asgi_scope, query, settled_count, uvicorn_server

STREAM_CHUNKS, STREAM_CHUNK, STREAM_PAUSE = 4, b"f" * 4096, 0.1
BACKGROUND_SLEEP = 0.5
FAILURE = NotImplementedError("endpoint failed")


def make_app(background_done: threading.Event) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.post("/items/{item_id}", status_code=201)
    async def create(item_id: int, request: Request) -> dict[str, Any]:
        body = await request.body()
        return {"received": len(body), "te": request.headers.get("transfer-encoding")}

    async def later() -> None:
        await asyncio.sleep(BACKGROUND_SLEEP)
        background_done.set()

    @app.get("/background")
    async def background(tasks: BackgroundTasks) -> str:
        tasks.add_task(later)
        return "queued"

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(STREAM_CHUNKS):
                if i:
                    await asyncio.sleep(STREAM_PAUSE)
                yield STREAM_CHUNK

        return StreamingResponse(chunks())

    @app.get("/boom")
    def boom() -> None:
        raise FAILURE

    teams = APIRouter(prefix="/teams/{team}")

    @teams.get("/members/{member}")
    async def member(team: str, member: int) -> str:
        return f"{team}:{member}"

    v1 = APIRouter(prefix="/v1")

    @v1.get("/users/{uid}")
    async def user(uid: int) -> int:
        return uid

    v1.include_router(teams)
    api = APIRouter(prefix="/api")
    api.include_router(v1)
    app.include_router(api, prefix="/root")

    sub = FastAPI()

    @sub.get("/hello/{name}")
    async def hello(name: str) -> str:
        return f"hello {name}"

    app.mount("/mnt/{ver}", sub)
    app.add_middleware(InstrumentMiddleware)
    return app


@pytest.fixture
def background_done() -> threading.Event:
    return threading.Event()


@pytest.fixture
def client(background_done: threading.Event) -> Iterator[httpx.Client]:
    with uvicorn_server(make_app(background_done)) as url, httpx.Client(base_url=url) as c:
        yield c


def test_templates_prefixes_mounts_and_unmatched(client: httpx.Client, db_path: Path) -> None:
    """Endpoints carry full templates through nested routers and Mounts; 404s fold into one."""
    expected = {
        "/items/{item_id}": ["/items/1", "/items/2"],
        "/root/api/v1/users/{uid}": ["/root/api/v1/users/7"],
        "/root/api/v1/teams/{team}/members/{member}": ["/root/api/v1/teams/red/members/1",
                                                       "/root/api/v1/teams/blue/members/2"],
        "/mnt/{ver}/hello/{name}": ["/mnt/v1/hello/ann", "/mnt/v2/hello/bo", "/mnt/v2/hello/cy"],
    }
    for paths in expected.values():
        for path in paths:
            assert client.get(path).status_code == 200, path
    for path in ("/nowhere", "/root/api/v2/users/1", "/mnt/v1/bye/ann"):
        assert client.get(path).status_code == 404
    assert settled_count(db_path, 11) == 11
    rows = query(db_path, "SELECT endpoint, status_code, COUNT(*) FROM api_metrics GROUP BY 1, 2")
    assert sorted(rows) == sorted([(name, 200, len(paths)) for name, paths in expected.items()]
                                  + [("__unmatched__", 404, 3)])


def test_background_tasks_not_counted(client: httpx.Client, db_path: Path,
                                      background_done: threading.Event) -> None:
    """Time a BackgroundTasks job spends after the response is not part of the request."""
    assert client.get("/background").json() == "queued"
    assert background_done.wait(5)
    assert settled_count(db_path, 1) == 1
    [(endpoint, ms)] = query(db_path, "SELECT endpoint, response_time_ms FROM api_metrics")
    assert endpoint == "/background"
    assert ms < BACKGROUND_SLEEP * 1000 / 2


def test_streaming_response_duration_covers_the_stream(client: httpx.Client,
                                                       db_path: Path) -> None:
    """A StreamingResponse is timed to its last chunk with a small time to first byte."""
    body = client.get("/stream").content
    assert len(body) == STREAM_CHUNKS * len(STREAM_CHUNK)
    assert settled_count(db_path, 1) == 1
    [(ms, ttfb, size, disc)] = query(db_path, "SELECT response_time_ms, ttfb_ms,"
                                              " response_size_bytes, client_disconnected"
                                              " FROM api_metrics")
    stream_ms = (STREAM_CHUNKS - 1) * STREAM_PAUSE * 1000
    assert ms >= stream_ms
    assert ttfb < stream_ms / 4
    assert (size, disc) == (len(body), 0)


def test_post_and_chunked_upload_bytes(client: httpx.Client, db_path: Path) -> None:
    """POST bodies, sized and chunked, are counted exactly in request_size_bytes."""
    plain = client.post("/items/1", content=b"x" * 5000)
    assert (plain.status_code, plain.json()) == (201, {"received": 5000, "te": None})
    parts = [b"y" * 8192] * 9 + [b"z" * 11]
    chunked = client.post("/items/2", content=iter(parts))
    assert chunked.json() == {"received": 73_739, "te": "chunked"}
    assert settled_count(db_path, 2) == 2
    rows = query(db_path, "SELECT endpoint, method, status_code, request_size_bytes,"
                          " response_size_bytes FROM api_metrics ORDER BY request_size_bytes")
    assert rows == [("/items/{item_id}", "POST", 201, 5000, len(plain.content)),
                    ("/items/{item_id}", "POST", 201, 73_739, len(chunked.content))]
    assert query(db_path, "SELECT request_bytes, response_bytes FROM metric_rollups") == [
        (78_739, len(plain.content) + len(chunked.content))]


def test_endpoint_exception_recorded_as_500(client: httpx.Client, db_path: Path) -> None:
    """Behind uvicorn, an endpoint that raises is answered 500 and recorded with its type."""
    assert client.get("/boom").status_code == 500
    assert settled_count(db_path, 1) == 1
    assert query(db_path, "SELECT endpoint, status_code, error_count, exception FROM api_metrics"
                 ) == [("/boom", 500, 1, "NotImplementedError")]


def test_endpoint_exception_propagates_unchanged(db_path: Path,
                                                 background_done: threading.Event) -> None:
    """Calling the FastAPI app directly, the endpoint's own exception object comes out."""
    app = make_app(background_done)
    sent: list[dict[str, Any]] = []
    scope = asgi_scope("/boom")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(NotImplementedError) as caught:
        asyncio.run(app(scope, receive, send))
    assert caught.value is FAILURE
    assert any(entry.name == "boom" for entry in caught.traceback)
    assert sent[0]["status"] == 500
    assert settled_count(db_path, 1) == 1
    assert query(db_path, "SELECT endpoint, status_code, exception FROM api_metrics") == [
        ("/boom", 500, "NotImplementedError")]


def test_instrument_app_helper_adds_the_middleware(db_path: Path,
                                                   background_done: threading.Event) -> None:
    """``instrument_app`` wires the same middleware, so templates are recorded the same way."""
    app = FastAPI()

    @app.get("/things/{tid}")
    async def thing(tid: int) -> int:
        return tid

    assert instrument_app(app) is app
    with uvicorn_server(app) as url, httpx.Client(base_url=url) as c:
        assert [c.get(f"/things/{i}").json() for i in range(3)] == [0, 1, 2]
    assert settled_count(db_path, 3) == 3
    assert query(db_path, "SELECT endpoint, COUNT(*) FROM api_metrics GROUP BY 1") == [
        ("/things/{tid}", 3)]
