"""``instrument dashboard``: serve the page and the API over any app's SQLite files.

A threaded stdlib WSGI server (one thread per connection), bound to loopback
unless told otherwise. It reads the files the instrumented processes write, so
it can run beside them, on a copy, or after they stopped; several processes'
data in one file shows as one service, and so does a fleet's in one PostgreSQL
database (``INSTRUMENT_STORAGE`` or ``--db postgresql://...``).
"""

from __future__ import annotations

import logging
import socketserver
import sys
import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from instrument.dashboard._app import Dashboard
from instrument.dashboard._glue import WSGIDashboard
from instrument.dashboard._paths import PAGE

__all__ = ["DashboardServer", "make_dashboard_server", "serve"]

log = logging.getLogger("instrument")


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass  # no access log: query strings may hold search text

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("instrument dashboard: " + format, *args)


class DashboardServer(socketserver.ThreadingMixIn, WSGIServer):
    """A WSGIServer that answers each connection on its own daemon thread."""

    daemon_threads = True
    allow_reuse_address = True

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}{PAGE}"


def make_dashboard_server(dashboard: Dashboard, host: str = "127.0.0.1",
                          port: int = 3000) -> DashboardServer:
    """Bind (port 0 picks a free one) without serving yet; ``.url`` tells where."""
    server = make_server(host, port, WSGIDashboard(dashboard), server_class=DashboardServer,
                         handler_class=_QuietHandler)
    assert isinstance(server, DashboardServer)
    return server


def serve(dashboard: Dashboard, host: str = "127.0.0.1", port: int = 3000, *,
          ready: Callable[[DashboardServer], None] | None = None,
          stop: threading.Event | None = None) -> None:
    """Serve until interrupted (or ``stop`` is set); ``ready`` is called once listening."""
    server = make_dashboard_server(dashboard, host, port)
    dashboard.log_status(server.url, off_level=logging.WARNING)
    if dashboard.auth.public and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("instrument: the dashboard is public and listens on %s: anyone who can reach"
                    " this address can read it.", host)
    if ready is not None:
        ready(server)
    if stop is not None:
        def stopper() -> None:
            stop.wait()
            server.shutdown()

        threading.Thread(target=stopper, name="instrument-dashboard-stop", daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("instrument dashboard: stopped", file=sys.stderr)
    finally:
        server.server_close()
        dashboard.close()


def run(db: str | None = None, *, alerts_db: str | None = None, host: str = "127.0.0.1",
        port: int = 3000, public: bool = False) -> int:
    """The ``instrument dashboard`` command: returns the process exit code.

    With neither a token nor public access configured it mints a token for this run
    and prints a link that signs you in (as ``jupyter notebook`` does), so the command
    that exists to show the dashboard never serves a wall of 404s.
    """
    import secrets
    import signal

    from instrument.config import ConfigError, Settings
    from instrument.dashboard import alerts_db_path

    if not logging.getLogger().handlers and not log.handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"instrument dashboard: {exc}", file=sys.stderr)
        return 2
    metrics_db = db or settings.storage or settings.metrics_db
    public = public or settings.dashboard_public
    token = settings.dashboard_token
    minted = not (token or public)
    if minted:
        token = secrets.token_urlsafe(24)
    dashboard = Dashboard(metrics_db, alerts_db=alerts_db or alerts_db_path(), token=token,
                          public=public, collection_interval=settings.collection_interval,
                          health_public=settings.health_public)
    stop = threading.Event()

    def ready(server: DashboardServer) -> None:
        print(f"instrument dashboard: serving {server.url} over {dashboard.api.db.path}",
              flush=True)
        if minted:
            # stdout, not the log: the link is for the person at this terminal.
            print(f"  sign in: {server.url}/login?token={token}\n"
                  "  (a token minted for this run; set INSTRUMENT_DASHBOARD_TOKEN to keep one"
                  " across runs, or pass --public to open it without one)", flush=True)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve(dashboard, host, port, ready=ready, stop=stop)
    except OSError as exc:
        print(f"instrument dashboard: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        dashboard.close()
        return 1
    return 0
