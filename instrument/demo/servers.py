"""The demo's apps: the examples loaded from their files and served on free loopback ports.

Both servers run in threads of the demo's process (werkzeug's threaded server for
Flask, ``uvicorn.Server`` for FastAPI), so they share the kit's one buffer and
flusher, as two apps of one deployment would share a host. Each listens on a
socket bound to port 0 before it starts: no port is guessed.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["HOST", "Served", "find_example", "load_example", "serve_asgi", "serve_wsgi"]

HOST = "127.0.0.1"


def find_example(name: str) -> Path:
    """The example file, in the installed package or next to the source checkout."""
    package = Path(__file__).resolve().parent.parent  # instrument/
    for candidate in (package / "_examples" / name, package.parent / "examples" / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"example {name!r} not found (looked in the package and ./examples)")


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>`` under its own stem (``flask_app``), as a script would be."""
    path = find_example(name)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(path.stem, module)  # Flask finds its root path through it
    spec.loader.exec_module(module)
    return module


class Served:
    """One app being served: its name, base URL and a way to stop it."""

    def __init__(self, name: str, url: str, app: Any, stop: Any) -> None:
        self.name = name
        self.url = url
        self.app = app
        self._stop = stop

    def stop(self) -> None:
        self._stop()


def serve_wsgi(name: str, app: Any) -> Served:
    """Serve a WSGI app with werkzeug's threaded server; access lines are not logged."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    server = make_server(HOST, 0, app, threaded=True, request_handler=Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"demo-{name}", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5.0)

    return Served(name, f"http://{HOST}:{server.port}", app, stop)


def serve_asgi(name: str, app: Any, timeout: float = 15.0) -> Served:
    """Serve an ASGI app with uvicorn in a thread (signals stay with the demo's main thread)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(512)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_config=None, log_level="warning",
                            access_log=False, ws="none", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"demo-{name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        sock.close()
        raise RuntimeError(f"uvicorn did not start the {name} app within {timeout:g}s")

    def stop() -> None:
        server.should_exit = True
        thread.join(10.0)
        sock.close()

    return Served(name, f"http://{HOST}:{port}", app, stop)
