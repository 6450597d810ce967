"""WSGI and ASGI front ends for :class:`Dashboard`: translate, call, translate back.

Bodies are read only for POST and capped at 64 KiB (the API takes tiny JSON and
form bodies). The ASGI side runs the dashboard, whose SQLite reads block, on
the event loop's default thread pool so the app's other requests keep flowing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from instrument.dashboard._http import Request, Response, problem
from instrument.dashboard._paths import is_dashboard_path
from instrument.types import ASGIApp, Receive, Scope, Send, StartResponse, WSGIApp, WSGIEnviron

if TYPE_CHECKING:  # imported when first built: an app serving only health need not load it
    from instrument.dashboard._app import Dashboard

__all__ = ["MAX_BODY", "ASGIDashboard", "WSGIDashboard", "route_path"]

MAX_BODY = 64 * 1024


class _Lazy:
    """The dashboard, or what builds it on the first request that reaches it.

    Every instrumented app answers the status-only health check by default (issue 17),
    but most never see one: building the dashboard (its API, stores, OpenAPI document)
    up front cost each of them about 4 MB of memory. A factory defers that to the first
    health request; building twice under concurrent first requests is harmless, since
    the factory hands out one shared dashboard per settings.
    """

    __slots__ = ("_built", "_factory")

    def __init__(self, dashboard: Dashboard | Callable[[], Dashboard]) -> None:
        self._built: Dashboard | None = None
        self._factory: Callable[[], Dashboard] | None = None
        if callable(dashboard) and not hasattr(dashboard, "enabled"):
            self._factory = dashboard
        else:
            self._built = dashboard  # type: ignore[assignment]

    @property
    def dashboard(self) -> Dashboard:
        built = self._built
        if built is None:
            assert self._factory is not None
            built = self._built = self._factory()
        return built


def route_path(path: str, root_path: str) -> str:
    """The path below an ASGI ``root_path`` (servers differ on whether ``path`` includes it)."""
    if root_path and path.startswith(root_path):
        return path[len(root_path):] or "/"
    return path


class WSGIDashboard(_Lazy):
    """The dashboard as a WSGI application; other paths go to ``app`` when one is given.

    ``claims`` says which paths are the dashboard's (all of its paths by default; only
    the health check while the dashboard is off, so an app's own ``/monitoring`` stays).
    """

    __slots__ = ("app", "claims")

    def __init__(self, dashboard: Dashboard | Callable[[], Dashboard],
                 app: WSGIApp | None = None, *,
                 claims: Callable[[str], bool] = is_dashboard_path) -> None:
        super().__init__(dashboard)
        self.app = app
        self.claims = claims

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        if self.app is not None and not self.claims(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET").upper()
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                   if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        body = b""
        response: Response | None = None
        if method == "POST":
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                response = problem(413, f"Bodies are limited to {MAX_BODY} bytes.")
            elif length:
                body = environ["wsgi.input"].read(length)
        if response is None:
            path = environ.get("PATH_INFO", "") or "/"
            # PEP 3333 hands the path over as latin-1 text; the dashboard wants real UTF-8.
            path = path.encode("latin-1", "replace").decode("utf-8", "replace")
            response = self.dashboard(Request(
                method, path, environ.get("QUERY_STRING", ""), headers, body,
                environ.get("wsgi.url_scheme", "http"), environ.get("SCRIPT_NAME", "")))
        start_response(response.status_line, response.header_list())
        return [] if method == "HEAD" else [response.body]


class ASGIDashboard(_Lazy):
    """The dashboard as an ASGI application (HTTP only); other paths go to ``app`` if given.

    ``claims`` as for :class:`WSGIDashboard`.
    """

    __slots__ = ("app", "claims")

    def __init__(self, dashboard: Dashboard | Callable[[], Dashboard],
                 app: ASGIApp | None = None, *,
                 claims: Callable[[str], bool] = is_dashboard_path) -> None:
        super().__init__(dashboard)
        self.app = app
        self.claims = claims

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is not None and (scope["type"] != "http" or not self.claims(
                route_path(scope["path"], scope.get("root_path", "")))):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self._built is not None:  # never built: nothing to close
                        self._built.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        method = scope.get("method", "GET").upper()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers") or ()}
        response: Response | None = None
        body = b""
        if method == "POST":
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY:
                    response = problem(413, f"Bodies are limited to {MAX_BODY} bytes.")
                    break
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = b"".join(chunks)
        if response is None:
            root = scope.get("root_path", "")
            request = Request(method, route_path(scope["path"], root),
                              scope.get("query_string", b"").decode("latin-1"), headers, body,
                              scope.get("scheme", "http"), root)
            import asyncio  # here, not at the top: a WSGI app never loads it (7 MB with ssl)

            loop = asyncio.get_running_loop()
            response = await loop.run_in_executor(None, self.dashboard, request)
        await send({"type": "http.response.start", "status": response.status,
                    "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                for k, v in response.header_list()]})
        await send({"type": "http.response.body",
                    "body": b"" if method == "HEAD" else response.body})
