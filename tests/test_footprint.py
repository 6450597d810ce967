"""What a WSGI process loads because of the kit: nothing it does not use.

asyncio (7.5 MB resident here, ssl included) and ssl (4.6 MB) were imported by every
instrumented WSGI app, for the ASGI dashboard glue and a mail channel's TLS context that
it never used; ``benchmarks/memory.py`` measures the whole footprint against its 10 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, sys, time
import instrument
from instrument.wsgi import InstrumentMiddleware

instrument.configure(metrics_db=sys.argv[1], flush_interval=0.2)


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]


mw = InstrumentMiddleware(app)
for path in ("/a", "/monitoring/api/v1/monitoring/health", "/b"):
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.input": None}
    body = mw(env, lambda status, headers, exc_info=None: None)
    b"".join(body)
    getattr(body, "close", lambda: None)()
time.sleep(0.6)  # a flush cycle or two, alert evaluation included
instrument.shutdown()
print(json.dumps({m: m in sys.modules for m in ("asyncio", "ssl", "difflib")}))
"""


def test_a_wsgi_app_with_the_kit_loads_neither_asyncio_nor_ssl(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "m.db")],
                         capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {"asyncio": False, "ssl": False, "difflib": False}, out.stderr[-2000:]
