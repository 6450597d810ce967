"""Requests whose bodies lie about their length, over real sockets to werkzeug and uvicorn.

Each lie is written byte for byte on a raw socket: a body shorter than its
Content-Length (then the client stops sending), longer, unparsable lengths,
negative and 20-digit ones, Content-Length together with chunked encoding,
broken chunk sizes, two different Content-Length headers. Whatever the server
makes of it, every request that reached the app is stored exactly once with
the bytes the app actually received, nothing else is stored, and the server
and the kit go on serving.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import instrument
from instrument.asgi import InstrumentMiddleware as ASGIInstrument
from instrument.wsgi import InstrumentMiddleware
from tests.reliability.harness import FIGURES
from tests.servers import query, uvicorn_server, werkzeug_server

CASES: dict[str, bytes] = {
    "short": b"POST /short HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
    "long": b"POST /long HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" + b"x" * 45,
    "nan": b"POST /nan HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nabc",
    "negative": b"POST /negative HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\nabc",
    "huge": b"POST /huge HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n"
            b"0123456789",
    "both": b"POST /both HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "badchunk": b"POST /badchunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"zz\r\nhello\r\n0\r\n\r\n",
    "twice": b"POST /twice HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n"
             b"hello12",
    "stalled": b"POST /stalled HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
}


def send_raw(url: str, data: bytes) -> bytes:
    """Write ``data``, stop sending, and read whatever comes back until close or 5 s."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


class Seen:
    """What reached the app: (path, bytes it received, exception reading it) per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str | None]] = []
        self.lock = threading.Lock()

    def add(self, path: str, n: int, exc: str | None = None) -> None:
        with self.lock:
            self.calls.append((path, n, exc))


def wsgi_app(seen: Seen) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raw = environ.get("CONTENT_LENGTH") or ""
        n = int(raw) if raw.isdigit() else 0
        try:
            data = environ["wsgi.input"].read(min(n, 1 << 20)) if n else \
                environ["wsgi.input"].read()
        except Exception as exc:  # a broken body: the app fails, as most would
            seen.add(environ["PATH_INFO"], 0, type(exc).__name__)
            raise
        seen.add(environ["PATH_INFO"], len(data))
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
    return app


def asgi_app(seen: Seen) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        seen.add(scope["path"], size)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


@pytest.mark.parametrize("server", ["werkzeug", "uvicorn"])
def test_bodies_that_lie_about_their_length(server: str, tmp_path: Path) -> None:
    """Every request that reached the app is stored once, with the bytes it really got."""
    db = tmp_path / "m.db"
    instrument.configure(metrics_db=str(db), flush_interval=0.05)
    seen = Seen()
    if server == "werkzeug":
        context = werkzeug_server(InstrumentMiddleware(wsgi_app(seen)))
    else:
        context = uvicorn_server(ASGIInstrument(asgi_app(seen)), lifespan="off")
    with context as url:
        for data in CASES.values():
            send_raw(url, data)
        answer = send_raw(url, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
        assert instrument.flush(10)
        rows = Counter(query(db, "SELECT endpoint, request_size_bytes, exception"
                                 " FROM api_metrics"))
    assert rows == Counter(seen.calls)
    assert ("/after", 0, None) in seen.calls and len(seen.calls) >= 3
    stats = instrument.stats()
    assert stats["alive"] and stats["backends"][0]["errors_total"] == 0
    FIGURES["bad inputs tried: lying bodies over sockets"] += len(CASES)
