"""Without its compiled helpers (no C compiler at install) the kit runs on their twins.

A fresh interpreter is started with an import hook that refuses the three extension
modules, as an install without a compiler leaves them missing; the middlewares must
then pick the pure-Python exchanges and still record every request exactly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = r'''
import asyncio, importlib.abc, sqlite3, sys

class NoCompiled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in ("instrument.adapters._asgi", "instrument.adapters._wsgi",
                    "instrument.core._trace"):
            raise ImportError(f"{name} was not compiled")
        return None

sys.meta_path.insert(0, NoCompiled())
import instrument
from instrument.adapters import asgi, wsgi
from instrument.core import trace
from instrument.core.runtime import runtime
from werkzeug.test import create_environ

instrument.configure(metrics_db=sys.argv[1], flush_interval=3600)
assert asgi._Native is None and wsgi._Native is None
assert trace.fast_continued is trace.continued

def hello(environ, start_response):
    start_response("200 OK", [])
    return [b"hi"]

app = wsgi.InstrumentMiddleware(hello)
assert app._native is False
for _ in range(5):
    body = app(create_environ("/w", headers={"traceparent":
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}), lambda *a: len)
    assert list(body) == [b"hi"]
    body.close()

async def ahello(scope, receive, send):
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

mw = asgi.InstrumentMiddleware(ahello)
assert mw._native is False
sent = []
async def server_send(message):
    sent.append(message)
async def requests():
    for _ in range(3):
        await mw({"type": "http", "method": "GET", "path": "/a", "root_path": "",
                  "query_string": b"", "headers": [(b"x-request-id", b"given")]},
                 None, server_send)
asyncio.run(requests())
assert (b"x-request-id", b"given") in sent[0]["headers"]
runtime.flush(10)
rows = sqlite3.connect(sys.argv[1]).execute(
    "SELECT endpoint, status_code, COUNT(*) FROM api_metrics GROUP BY 1, 2 ORDER BY 1").fetchall()
print(rows)
'''


def test_without_the_compiled_helpers_every_request_is_still_recorded(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "m.db")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[('/a', 201, 3), ('/w', 200, 5)]"
