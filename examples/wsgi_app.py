"""A framework-free WSGI app wrapped by ``instrument.wsgi.InstrumentMiddleware``.

Without a router the path names the request, behind the cardinality guard
(``INSTRUMENT_MAX_ROUTES``). Run: ``python examples/wsgi_app.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from instrument.wsgi import InstrumentMiddleware


def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = environ["wsgi.input"].read() if environ.get("CONTENT_LENGTH") else b""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello ", str(len(body)).encode(), b"\n"]


app = InstrumentMiddleware(hello)

if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    with make_server("127.0.0.1", 8001, app) as server:
        print("serving on http://127.0.0.1:8001")
        server.serve_forever()
