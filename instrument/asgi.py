"""Pure ASGI middleware, never ``BaseHTTPMiddleware``: ``app.add_middleware(InstrumentMiddleware)``.

The request ends when the last body chunk has been sent, so Starlette
background tasks, which run after that, do not count towards its duration.
Bytes are counted on ``receive`` and ``send`` as they flow. WebSocket and
lifespan scopes pass straight through, except that the kit flushes before the
server hears ``lifespan.shutdown.complete``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from time import perf_counter
from typing import Any

from ._buffer import KIND_HTTP
from ._context import asgi_enter, leave
from ._excludes import front
from ._routes import RouteResolver
from ._runtime import OFF, runtime
from .types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["InstrumentMiddleware"]


class _Exchange:
    """Counters for one request, with the wrapped receive and send as methods."""

    __slots__ = ("_receive", "_send", "disc", "qb", "rb", "rid", "status", "t_end", "tf")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.rid: bytes | None = None
        self.qb = 0
        self.rb = 0
        self.status = 500
        self.tf = 0.0
        self.t_end = 0.0
        self.disc = False

    async def receive(self) -> Message:
        message = await self._receive()
        kind = message["type"]
        if kind == "http.request":
            body = message.get("body")
            if body:
                self.qb += len(body)
        elif kind == "http.disconnect" and not self.t_end:
            # Servers answer receive() with http.disconnect once the response is complete
            # (Starlette's streaming responses listen for it): only earlier ones count.
            self.disc = True
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            body = message.get("body")
            if body:
                self.rb += len(body)
            await self._send(message)
            if not message.get("more_body", False):
                self.t_end = perf_counter()
            return
        if kind == "http.response.start":
            self.status = message["status"]
            if self.rid is not None:  # a new list: the app may reuse its headers
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", self.rid)]
            await self._send(message)
            self.tf = perf_counter()
            return
        await self._send(message)
        if kind == "http.response.pathsend":
            self.t_end = perf_counter()


class InstrumentMiddleware:
    """Wrap any ASGI app, or ``app.add_middleware(InstrumentMiddleware)`` on Starlette/FastAPI.

    With ``INSTRUMENT_ENABLED=false`` the constructor returns ``app`` itself.
    """

    def __new__(cls, app: ASGIApp, **options: Any) -> Any:
        runtime.ensure_started()
        if runtime.state == OFF:
            return app
        return super().__new__(cls)

    def __init__(self, app: ASGIApp, *, exclude_paths: Iterable[str] | None = None) -> None:
        settings = runtime.ensure_started()
        self.app = app
        self._rec = runtime.recorder
        # excluded paths (and the kit's /metrics and dashboard) are answered, never recorded
        self._bypass, self._exclude = front(app, settings, exclude_paths, asgi=True)
        self._resolve = RouteResolver(app)
        self._rid = settings.request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                send = _FlushOnShutdown(send)
            await self.app(scope, receive, send)
            return
        exclude = self._exclude
        if exclude is not None and scope["path"] in exclude:
            await self._bypass(scope, receive, send)
            return
        root0 = scope.get("root_path", "")
        ex = _Exchange(receive, send)
        tok = None
        if self._rid:
            ex.rid, tok = asgi_enter(scope)
        t0 = perf_counter()
        try:
            await self.app(scope, ex.receive, ex.send)
        except BaseException as e:
            t1 = ex.t_end or perf_counter()
            self._rec.add((KIND_HTTP, t0, t1, ex.tf, self._resolve(scope, root0), scope["method"],
                           500, ex.qb, ex.rb, type(e), ex.disc))
            if tok is not None:
                leave(tok)
            raise
        t1 = ex.t_end or perf_counter()
        self._rec.add((KIND_HTTP, t0, t1, ex.tf, self._resolve(scope, root0), scope["method"],
                       ex.status, ex.qb, ex.rb, None, ex.disc))
        if tok is not None:
            leave(tok)


class _FlushOnShutdown:
    """Wraps a lifespan ``send``: flush what is buffered before shutdown is reported complete.

    Some servers end the process without running ``atexit`` handlers once shutdown
    completes (uvicorn >= 0.29 re-raises the SIGTERM it caught, with the default
    handler back), so this is the last moment buffered samples can be saved.
    """

    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    async def __call__(self, message: Message) -> None:
        if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            timeout = runtime.settings.shutdown_timeout if runtime.settings else 5.0
            await asyncio.get_running_loop().run_in_executor(None, runtime.flush, timeout)
        await self._send(message)
