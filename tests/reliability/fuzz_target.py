"""atheris (libFuzzer) target, run by test_fuzz: raw bytes become requests, queries and settings.

Coverage-guided, so it finds its way into branches random data rarely reaches.
Each input is split into: a WSGI request (method, path as latin-1 text,
query string, headers including X-Request-ID, Content-Length and body) sent
through the instrumented app with the dashboard mounted; the same query string
on a dashboard API endpoint with the token; and one setting value. Any
exception, a 5xx, an unsafe request id or a non-ConfigError from the settings
is a crash. Usage: ``python -m tests.reliability.fuzz_target -runs=N DIR``.
"""

from __future__ import annotations

import io
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports():
    import instrument
    from instrument.alerting.config import ALERT_VARIABLES, AlertSettings
    from instrument.config import VARIABLES, ConfigError, Settings
    from instrument.dashboard import Dashboard
    from instrument.dashboard._http import Request
    from instrument.wsgi import InstrumentMiddleware

TOKEN = "fuzz-token-0123456789abcdef"
SAFE_ID = re.compile(r"[A-Za-z0-9._:+/=@-]{1,128}")
ENDPOINTS = ["health", "metrics/summary", "metrics/timeseries", "metrics/system", "routes",
             "alerts", "logs", "openapi.json", "alerts/x/acknowledge"]
NAMES = [n for v in (*VARIABLES, *ALERT_VARIABLES) for n in (v.name, *v.aliases)
         if not n.endswith(("_DB", "_DB_PATH", "_PATH", "_FILE"))]
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"]


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    raw = environ.get("CONTENT_LENGTH") or ""
    n = int(raw) if raw.isdigit() and raw.isascii() else 0
    environ["wsgi.input"].read(min(n, 65536))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def setup(directory: Path) -> tuple[Any, Dashboard]:
    from tests.dashboard_fixtures import populate

    populate(directory / "m.db", recent_minutes=20)
    instrument.configure(metrics_db=str(directory / "live.db"), dashboard_token=TOKEN,
                         flush_interval=0.2)
    return InstrumentMiddleware(app), Dashboard(str(directory / "m.db"), token=TOKEN)


def one(data: bytes, middleware: Any, dashboard: Dashboard) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    method = METHODS[fdp.ConsumeIntInRange(0, len(METHODS) - 1)]
    path = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200)).decode("latin-1")
    query = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200)).decode("latin-1")
    rid = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 150)).decode("latin-1")
    length = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12)).decode("latin-1")
    header = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 100)).decode("latin-1")
    setting = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 60)).replace("\0", "")
    name = NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)]
    endpoint = ENDPOINTS[fdp.ConsumeIntInRange(0, len(ENDPOINTS) - 1)]
    body = fdp.ConsumeBytes(1024)

    environ = {"REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path,
               "QUERY_STRING": query, "SERVER_NAME": "h", "SERVER_PORT": "80",
               "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": length,
               "HTTP_X_REQUEST_ID": rid, "HTTP_COOKIE": header, "HTTP_AUTHORIZATION": header}
    got: list[Any] = []
    out = middleware(environ, lambda s, h, e=None: got.append((s, h)))
    b"".join(out)
    getattr(out, "close", lambda: None)()
    status, headers = got[0]
    if status.startswith("5"):
        raise AssertionError(f"5xx for {environ!r}")
    ids = [v for k, v in headers if k.lower() == "x-request-id"]
    if ids and not SAFE_ID.fullmatch(ids[0]):
        raise AssertionError(f"unsafe request id {ids!r}")

    r = dashboard(Request(method, "/api/v1/monitoring/" + endpoint, query,
                          {"authorization": f"Bearer {TOKEN}"}, body))
    if r.status >= 500:
        raise AssertionError(f"{r.status} for {endpoint}?{query!r}: {r.body[:200]!r}")

    try:
        Settings.from_env({name: setting})
        AlertSettings.from_env({name: setting})
    except ConfigError:
        pass


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="instrument-fuzz-"))
    middleware, dashboard = setup(directory)
    atheris.Setup(sys.argv, lambda data: one(data, middleware, dashboard))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
