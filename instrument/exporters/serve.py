"""Serving the exposition: in front of a WSGI or ASGI app, or standalone (``instrument exporter``).

The adapters put :class:`MetricsWSGI` / :class:`MetricsASGI` on their bypass
path, so a scrape is answered before the app and never recorded as a request.
The registry is built on the first scrape, so an app that is never scraped
never imports ``prometheus_client`` or reads the store. Reading the store runs
in a worker thread under ASGI; a store that cannot be read answers 503 and
never raises into the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["MetricsASGI", "MetricsWSGI", "run_exporter", "serve"]


def _render(registry: Any, accept: str | None) -> tuple[Any, bytes, str]:
    from instrument.exporters.prometheus import make_registry, render

    if registry is None:
        registry = make_registry()
    body, ctype = render(registry, accept)
    return registry, body, ctype


def _error_body(exc: BaseException) -> bytes:
    return f"instrument: cannot read the metrics store: {type(exc).__name__}: {exc}\n".encode()


class MetricsWSGI:
    """WSGI app in front of ``app`` that answers ``path`` with the exposition."""

    def __init__(self, app: Any, path: str = "/metrics", registry: Any = None) -> None:
        self.app = app
        self.path = path
        self._registry = registry

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != self.path:
            return self.app(environ, start_response)
        try:
            self._registry, body, ctype = _render(self._registry, environ.get("HTTP_ACCEPT"))
        except Exception as exc:  # a scrape must not take the app down
            body, ctype = _error_body(exc), "text/plain; charset=utf-8"
            start_response("503 Service Unavailable", [("Content-Type", ctype)])
            return [body]
        start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [body]


class MetricsASGI:
    """ASGI app in front of ``app`` that answers ``path`` (store read in a worker thread)."""

    def __init__(self, app: Any, path: str = "/metrics", registry: Any = None) -> None:
        self.app = app
        self.path = path
        self._registry = registry

    def _render(self, accept: str | None) -> tuple[bytes, str]:
        self._registry, body, ctype = _render(self._registry, accept)
        return body, ctype

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        accept = ",".join(v.decode("latin-1") for k, v in scope.get("headers", ())
                          if k.lower() == b"accept")
        try:
            body, ctype = await asyncio.to_thread(self._render, accept)
            status = 200
        except Exception as exc:  # a scrape must not take the app down
            body, ctype, status = _error_body(exc), "text/plain; charset=utf-8", 503
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def serve(host: str = "127.0.0.1", port: int = 9464, *, registry: Any = None,
          ready: Any = None) -> None:
    """``instrument exporter``: serve the exposition on ``/metrics`` (and ``/``) until stopped.

    ``ready`` is called with the bound (host, port) once the socket listens.
    """
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    def not_found(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"metrics are at /metrics\n"]

    from instrument.exporters.prometheus import make_registry

    registry = registry if registry is not None else make_registry()
    app = MetricsWSGI(MetricsWSGI(not_found, "/", registry), "/metrics", registry)
    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_Quiet)
    try:
        if ready is not None:
            ready(server.server_address[:2])
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def run_exporter(*, db: str | None = None, storage: str | None = None, host: str = "127.0.0.1",
                 port: int = 9464, all_hosts: bool = False) -> int:
    """The ``instrument exporter`` command; settings from the environment, not the runtime."""
    import signal
    import sys

    from instrument.config import Settings
    from instrument.exporters.prometheus import make_registry
    from instrument.exporters.snapshot import source_for

    overrides: dict[str, Any] = {}
    if db is not None:
        overrides["metrics_db"] = db
    if storage is not None:
        overrides["storage"] = storage
    settings = Settings.from_env(**overrides)
    registry = make_registry(source_for(settings, all_hosts=all_hosts))

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)

    def ready(addr: tuple[str, int]) -> None:
        print(f"instrument exporter: serving http://{addr[0]}:{addr[1]}/metrics", flush=True)

    try:
        serve(host, port, registry=registry, ready=ready)
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    return 0
