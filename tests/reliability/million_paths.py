"""Run by test_hostile_http: N requests with N distinct paths through the WSGI middleware.

In its own process so the resident memory it reports is the kit's and this
loop's alone. The app has no router, so the raw path is the route name, which
is what the cardinality guard (``INSTRUMENT_MAX_ROUTES``, default 1000) exists
for. Prints one JSON object: what was sent, stored and dropped, the distinct
names in every table that has a name column, and the RSS after the first tenth
and at the end (after a flush and a garbage collection each time).
"""

from __future__ import annotations

import gc
import io
import json
import sqlite3
import sys
import time
from typing import Any

import psutil

import instrument
from instrument.wsgi import InstrumentMiddleware


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def main(db: str, n: int) -> dict[str, Any]:
    # Raw rows off: a million api_metrics rows would measure SQLite, not the guard.
    instrument.configure(metrics_db=db, raw_rows=False, flush_interval=0.2)
    middleware = InstrumentMiddleware(app)
    base = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http"}

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    process = psutil.Process()
    rss: dict[int, int] = {}
    started = time.perf_counter()
    for i in range(1, n + 1):
        environ = base.copy()
        environ["PATH_INFO"] = f"/items/{i}/{i * 7919 % 104729}"
        body = middleware(environ, start_response)
        for _ in body:
            pass
        body.close()
        if i in (n // 10, n):
            instrument.flush(60)
            gc.collect()
            rss[i] = process.memory_info().rss
    seconds = time.perf_counter() - started
    stats = instrument.stats()
    assert instrument.shutdown(60)
    conn = sqlite3.connect(db)
    names: dict[str, int] = {}
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        cols = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if "name" in cols:
            names[table] = conn.execute(f"SELECT COUNT(DISTINCT name) FROM {table}").fetchone()[0]
    stored = conn.execute("SELECT SUM(count) FROM metric_rollups WHERE kind = 'http'").fetchone()[0]
    overflow = conn.execute("SELECT SUM(count) FROM metric_rollups WHERE name = '__overflow__'"
                            ).fetchone()[0]
    return {"sent": n, "stored": stored, "dropped": stats["dropped"], "overflow": overflow,
            "distinct_names": names, "rss_at_tenth": rss[n // 10], "rss_at_end": rss[n],
            "seconds": seconds}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
