"""A framework-free WSGI app wrapped by ``instrument.wsgi.InstrumentMiddleware``.

Without a router the path names the request, behind the cardinality guard
(``INSTRUMENT_MAX_ROUTES``). Run: ``python examples/wsgi_app.py`` (``PORT=0``: a free port).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from instrument.wsgi import InstrumentMiddleware


def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""  # never read past the body
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello ", str(len(body)).encode(), b"\n"]


app = InstrumentMiddleware(hello)

if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    with make_server("127.0.0.1", int(os.environ.get("PORT", "8001")), app) as server:
        print(f"serving on http://127.0.0.1:{server.server_port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:  # Ctrl-C: a clean exit, so the kit flushes at exit
            pass
