"""Litestar (uvicorn) and Falcon (WSGI under werkzeug, ASGI under uvicorn): names and exactness.

The same checks as tests/test_fastapi.py and tests/test_flask.py, parametrised over
the frameworks: route templates as each framework spells them, unmatched paths
folded into ``__unmatched__``, N concurrent requests recorded exactly once with
their statuses and bytes, a stream timed to its last byte, and exceptions the
framework answers itself recorded with their real status (and type, for a 500).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi
import httpx
import pytest
from litestar import Litestar, Request, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response import Stream

import instrument
import instrument.falcon
import instrument.litestar
from tests.servers import (
    asgi_scope,
    in_threads,
    query,
    settled_count,
    uvicorn_server,
    werkzeug_server,
)

STREAM_CHUNKS, STREAM_CHUNK, STREAM_PAUSE = 4, b"f" * 4096, 0.1
FAILURE = NotImplementedError("handler failed")


def litestar_app() -> Any:
    @get("/items/{item_id:int}")
    async def item(item_id: FromPath[int]) -> dict[str, int]:
        return {"id": item_id}

    @post("/items/{item_id:int}", status_code=201)
    async def create(item_id: FromPath[int], request: Request[Any, Any, Any]) -> dict[str, int]:
        return {"received": len(await request.body())}

    @get("/stream")
    async def stream() -> Stream:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(STREAM_CHUNKS):
                if i:
                    await asyncio.sleep(STREAM_PAUSE)
                yield STREAM_CHUNK

        return Stream(chunks())

    @get("/boom")
    async def boom() -> None:
        raise FAILURE

    @get("/conflict")
    async def conflict() -> None:
        raise HTTPException(status_code=409, detail="taken")

    app = Litestar(route_handlers=[item, create, stream, boom, conflict], logging_config=None)
    assert instrument.litestar.instrument_app(app) is app
    return app


class _Items:
    def on_get(self, req: Any, resp: Any, item_id: int) -> None:
        resp.media = {"id": item_id}

    def on_post(self, req: Any, resp: Any, item_id: int) -> None:
        resp.media = {"received": len(req.bounded_stream.read())}
        resp.status = falcon.HTTP_201


class _Boom:
    def on_get(self, req: Any, resp: Any) -> None:
        raise FAILURE


class _Conflict:
    def on_get(self, req: Any, resp: Any) -> None:
        raise falcon.HTTPConflict(description="taken")


class _Stream:
    def on_get(self, req: Any, resp: Any) -> None:
        def chunks() -> Iterator[bytes]:
            for i in range(STREAM_CHUNKS):
                if i:
                    time.sleep(STREAM_PAUSE)
                yield STREAM_CHUNK

        resp.stream = chunks()


class _ItemsAsync:
    async def on_get(self, req: Any, resp: Any, item_id: int) -> None:
        resp.media = {"id": item_id}

    async def on_post(self, req: Any, resp: Any, item_id: int) -> None:
        resp.media = {"received": len(await req.bounded_stream.read())}
        resp.status = falcon.HTTP_201


class _BoomAsync:
    async def on_get(self, req: Any, resp: Any) -> None:
        raise FAILURE


class _ConflictAsync:
    async def on_get(self, req: Any, resp: Any) -> None:
        raise falcon.HTTPConflict(description="taken")


class _StreamAsync:
    async def on_get(self, req: Any, resp: Any) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(STREAM_CHUNKS):
                if i:
                    await asyncio.sleep(STREAM_PAUSE)
                yield STREAM_CHUNK

        resp.stream = chunks()


def falcon_app(asgi: bool) -> Any:
    app: Any = falcon.asgi.App() if asgi else falcon.App()
    resources = ((_ItemsAsync, _StreamAsync, _BoomAsync, _ConflictAsync) if asgi
                 else (_Items, _Stream, _Boom, _Conflict))
    for path, resource in zip(("/items/{item_id:int}", "/stream", "/boom", "/conflict"),
                              resources, strict=True):
        app.add_route(path, resource())
    return instrument.falcon.instrument_app(app)


@dataclass
class Framework:
    name: str
    build: Callable[[], Any]
    serve: Callable[[Any], AbstractContextManager[str]]
    item_template: str  # the template of /items/{item_id} as the framework names it


FRAMEWORKS = [
    Framework("litestar", litestar_app, uvicorn_server, "/items/{item_id}"),
    Framework("falcon-wsgi", lambda: falcon_app(False), werkzeug_server,
              "/items/{item_id:int}"),
    Framework("falcon-asgi", lambda: falcon_app(True), uvicorn_server, "/items/{item_id:int}"),
]


@pytest.fixture(params=FRAMEWORKS, ids=[f.name for f in FRAMEWORKS])
def framework(request: pytest.FixtureRequest) -> Framework:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def url(framework: Framework) -> Iterator[str]:
    with framework.serve(framework.build()) as base:
        yield base


def test_templates_and_unmatched(url: str, framework: Framework, db_path: Path) -> None:
    """Matched requests carry the template, never the path; unknown paths fold into one label."""
    with httpx.Client(base_url=url) as c:
        for i in (1, 2, 3):
            assert c.get(f"/items/{i}").json() == {"id": i}
        for path in ("/nowhere", "/items/1/more", "/x/y/z"):
            assert c.get(path).status_code == 404, path
    assert settled_count(db_path, 6) == 6
    rows = query(db_path, "SELECT endpoint, status_code, COUNT(*) FROM api_metrics GROUP BY 1, 2")
    assert sorted(rows) == sorted([(framework.item_template, 200, 3), ("__unmatched__", 404, 3)])


def test_concurrent_mixed_requests_recorded_exactly(url: str, framework: Framework,
                                                    db_path: Path) -> None:
    """4 threads x 60 mixed requests: every answered request once, with its status and bytes."""
    threads, per_thread = 4, 60
    answered: list[list[tuple[str, str, int, int, int]]] = [[] for _ in range(threads)]

    def client(n: int) -> None:
        with httpx.Client(base_url=url) as c:
            for i in range(per_thread):
                kind = i % 4
                if kind == 0:
                    body = b"q" * (100 + n * per_thread + i)
                    r = c.post(f"/items/{i}", content=body)
                    answered[n].append(("POST", framework.item_template, r.status_code,
                                        len(body), len(r.content)))
                    assert r.json() == {"received": len(body)}
                elif kind == 1:
                    r = c.get(f"/items/{i}")
                    answered[n].append(("GET", framework.item_template, r.status_code, 0,
                                        len(r.content)))
                elif kind == 2:
                    r = c.get(f"/missing/{i}")
                    answered[n].append(("GET", "__unmatched__", r.status_code, 0,
                                        len(r.content)))
                else:
                    r = c.get("/conflict")
                    answered[n].append(("GET", "/conflict", r.status_code, 0,
                                        len(r.content)))

    in_threads(client, threads)
    expected = sorted(row for rows in answered for row in rows)
    assert len(expected) == threads * per_thread
    assert {row[2] for row in expected} == {200, 201, 404, 409}
    assert settled_count(db_path, len(expected)) == len(expected)
    rows = query(db_path, "SELECT method, endpoint, status_code, request_size_bytes,"
                          " response_size_bytes FROM api_metrics")
    assert sorted(rows) == expected
    assert query(db_path, "SELECT SUM(count) FROM metric_rollups WHERE kind = 'http'") == [
        (len(expected),)]
    # A status the framework answered from its own HTTP error is not an exception.
    assert query(db_path, "SELECT COUNT(*) FROM api_metrics WHERE exception IS NOT NULL") == [
        (0,)]
    assert instrument.stats()["dropped"] == 0


def test_stream_timed_to_its_last_byte(url: str, db_path: Path) -> None:
    """A streamed body lasts until its last chunk, with a small time to first byte."""
    body = httpx.get(f"{url}/stream").content
    assert body == STREAM_CHUNK * STREAM_CHUNKS
    assert settled_count(db_path, 1) == 1
    [(endpoint, ms, ttfb, size, disc)] = query(
        db_path, "SELECT endpoint, response_time_ms, ttfb_ms, response_size_bytes,"
                 " client_disconnected FROM api_metrics")
    stream_ms = (STREAM_CHUNKS - 1) * STREAM_PAUSE * 1000
    assert endpoint == "/stream"
    assert ms >= stream_ms
    assert ttfb < stream_ms / 4
    assert (size, disc) == (len(body), 0)


def test_raising_handler_recorded_as_500_with_its_type(url: str, db_path: Path) -> None:
    """The framework answers a raising handler with a 500; the row names the exception."""
    r = httpx.get(f"{url}/boom")
    assert r.status_code == 500
    assert settled_count(db_path, 1) == 1
    assert query(db_path, "SELECT endpoint, status_code, error_count, exception,"
                          " response_size_bytes FROM api_metrics") == [
        ("/boom", 500, 1, "NotImplementedError", len(r.content))]


def test_litestar_flushes_at_lifespan_shutdown(db_path: Path) -> None:
    """Litestar answers lifespan itself; its shutdown hook saves what is buffered."""
    instrument.configure(flush_interval=60.0)  # nothing is flushed on the flusher's schedule
    with uvicorn_server(litestar_app()) as base:
        assert httpx.get(f"{base}/items/5").json() == {"id": 5}
    assert settled_count(db_path, 1, flush=False, timeout=0.5) == 1


def test_falcon_own_exception_handler_is_kept(db_path: Path) -> None:
    """An Exception handler the app registers answers as it likes; the kit only notes statuses."""
    app = falcon.App()
    app.add_route("/boom", _Boom())

    def teapot(req: Any, resp: Any, ex: Exception, params: Any) -> None:
        resp.status = falcon.HTTP_418

    app.add_error_handler(Exception, teapot)
    with werkzeug_server(instrument.falcon.instrument_app(app)) as base:
        assert httpx.get(f"{base}/boom").status_code == 418
    assert settled_count(db_path, 1) == 1
    assert query(db_path, "SELECT endpoint, status_code, exception FROM api_metrics") == [
        ("/boom", 418, None)]


def test_falcon_instrumented_twice_is_refused() -> None:
    """A second wrapper would record every request twice."""
    app = falcon.App()
    instrument.falcon.instrument_app(app)
    with pytest.raises(ValueError, match="already"):
        instrument.falcon.instrument_app(app)


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_falcon_unhandled_exception_passes_through(asgi: bool, db_path: Path) -> None:
    """An exception Falcon does not answer (its handler re-raises) reaches the server as is."""
    app: Any = falcon.asgi.App() if asgi else falcon.App()
    app.add_route("/boom", _BoomAsync() if asgi else _Boom())
    wrapped = instrument.falcon.instrument_app(app)

    if asgi:
        async def reraise(req: Any, resp: Any, ex: Exception, params: Any, **kw: Any) -> None:
            raise ex

        app.add_error_handler(Exception, reraise)
        scope = asgi_scope("/boom")

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            pass

        with pytest.raises(NotImplementedError) as caught:
            asyncio.run(wrapped(scope, receive, send))
    else:
        def reraise_sync(req: Any, resp: Any, ex: Exception, params: Any) -> None:
            raise ex

        app.add_error_handler(Exception, reraise_sync)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/boom", "SERVER_NAME": "x",
                   "SERVER_PORT": "80", "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1",
                   "wsgi.input": None, "wsgi.errors": None}
        with pytest.raises(NotImplementedError) as caught:
            wrapped(environ, lambda status, headers, exc_info=None: None)
    assert caught.value is FAILURE
    assert settled_count(db_path, 1) == 1
    assert query(db_path, "SELECT endpoint, status_code, exception FROM api_metrics") == [
        ("/boom", 500, "NotImplementedError")]


@pytest.mark.parametrize("build", [litestar_app, lambda: falcon_app(False),
                                   lambda: falcon_app(True)],
                         ids=["litestar", "falcon-wsgi", "falcon-asgi"])
def test_kill_switch_leaves_the_app_alone(build: Callable[[], Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With INSTRUMENT_ENABLED=false the helpers hand back the framework's own app."""
    monkeypatch.setenv("INSTRUMENT_ENABLED", "false")
    app = build()
    assert isinstance(app, (Litestar, falcon.App))
    if isinstance(app, Litestar):
        assert not isinstance(app.asgi_handler, instrument.litestar.InstrumentMiddleware)
