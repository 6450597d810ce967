"""The middlewares count requests in flight: begun and not yet ended, over real servers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from instrument.asgi import InstrumentMiddleware as AsgiMiddleware
from instrument.core.runtime import runtime
from instrument.wsgi import InstrumentMiddleware as WsgiMiddleware
from tests.servers import uvicorn_server, wait_until, werkzeug_server

HELD = 3


def test_wsgi_requests_in_flight_until_their_bodies_close() -> None:
    """Held requests count (streamed bodies until their last chunk), and all end at 0."""
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("boom")

        def body() -> Iterator[bytes]:
            yield b"first "
            release.wait(10)
            yield b"last"
        return body()

    with werkzeug_server(WsgiMiddleware(app)) as url, ThreadPoolExecutor(HELD) as pool:
        assert runtime.recorder.in_flight == 0
        futures = [pool.submit(requests.get, url + "/slow", timeout=20) for _ in range(HELD)]
        assert wait_until(lambda: runtime.recorder.in_flight == HELD, timeout=10)
        release.set()
        assert all(f.result().text == "first last" for f in futures)
        assert requests.get(url + "/boom", timeout=10).status_code == 500
        assert wait_until(lambda: runtime.recorder.in_flight == 0, timeout=10)


def test_asgi_requests_in_flight_until_the_app_returns() -> None:
    """Held ASGI requests count, including one whose app raises, and all end at 0."""
    release = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        await send({"type": "http.response.body", "body": b"done"})

    with uvicorn_server(AsgiMiddleware(app), lifespan="off") as url, \
            ThreadPoolExecutor(HELD) as pool:
        paths = ["/slow"] * (HELD - 1) + ["/boom"]
        futures = [pool.submit(_get_quietly, url + p) for p in paths]
        assert wait_until(lambda: runtime.recorder.in_flight == HELD, timeout=10)
        release.set()
        for f in futures:
            f.result()
        assert wait_until(lambda: runtime.recorder.in_flight == 0, timeout=10)


def _get_quietly(url: str) -> None:
    try:
        requests.get(url, timeout=20)
    except requests.RequestException:
        pass  # the /boom response is cut short after its start: the count is what matters
