"""Hostile requests through the middlewares: any path, any header, forged request ids, huge sizes.

Driven in process (PEP 3333 environs and ASGI scopes built by hypothesis) for
speed; the wire-level lies about bodies are in ``test_hostile_bodies``. For
every request: the app's answer (or the dashboard's, for its paths) reaches the
client unchanged, the ``X-Request-ID`` sent back is a safe token (the caller's
when that one was safe), no header can be split, and the store ends up with
exactly one row per request and the bytes the app really read.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import instrument
from instrument.asgi import InstrumentMiddleware as ASGIInstrument
from instrument.dashboard import is_dashboard_path
from instrument.wsgi import InstrumentMiddleware
from tests.reliability.harness import FIGURES, QUIET, TOKEN
from tests.servers import query

SAFE_ID = re.compile(r"[A-Za-z0-9._:+/=@-]{1,128}")
latin1 = st.characters(max_codepoint=255)
ids = (st.from_regex(SAFE_ID, fullmatch=True) | st.text(latin1, max_size=200)
       | st.sampled_from(["abc\r\nSet-Cookie: x=1", "a" * 129, "", " ", "ok\n", "é", "<x>",
                          "a\x00b", "../../etc/passwd", "x" * 1_000_000]))
header_names = st.from_regex(r"HTTP_[A-Z0-9_]{1,30}", fullmatch=True)
header_values = st.text(latin1, max_size=100) | st.just("v" * 1_000_000)
paths = (st.text(latin1, max_size=300) | st.sampled_from(
    ["/", "", "/monitoring", "/api/v1/monitoring/health", "/api/v1/monitoring/x/../../x",
     "/\xff\xfe", "/%00", "/" + "a" * 100_000, "/<script>alert(1)</script>", "/'; DROP TABLE x"]))
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "BREW",
                           "G\xe9T", "", "get"])


class ReadingApp:
    """Reads the body as a careful app would (CONTENT_LENGTH if it parses) and notes the bytes."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raw = environ.get("CONTENT_LENGTH") or ""
        n = int(raw) if raw.isdigit() and raw.isascii() else 0
        data = environ["wsgi.input"].read(min(n, 1 << 20))
        self.calls.append(len(data))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]


def check_id(headers: list[tuple[str, str]], sent: str | None) -> None:
    for name, value in headers:
        assert "\r" not in name + value and "\n" not in name + value
    rid = [v for k, v in headers if k.lower() == "x-request-id"]
    assert len(rid) == 1 and SAFE_ID.fullmatch(rid[0]), rid
    if sent is not None and SAFE_ID.fullmatch(sent):
        assert rid[0] == sent


def test_wsgi_any_request(tmp_path: Path) -> None:
    """Any path, method, headers, request id and body: one row each, bytes exact, ids safe."""
    db = tmp_path / "m.db"
    instrument.configure(metrics_db=str(db), dashboard_token=TOKEN, flush_interval=0.05)
    app = ReadingApp()
    middleware = InstrumentMiddleware(app)
    sent = [0]

    @settings(QUIET, max_examples=800)
    @given(path=paths, method=methods, rid=st.none() | ids, body=st.binary(max_size=2000),
           headers=st.dictionaries(header_names, header_values, max_size=5),
           length=st.sampled_from(["", "0", "-1", "abc", "1e3", "9" * 30, " 5", "same", "more"]))
    def one(path: str, method: str, rid: str | None, body: bytes, headers: dict[str, str],
            length: str) -> None:
        length = {"same": str(len(body)), "more": str(len(body) + 10)}.get(length, length)
        environ = {"REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path,
                   "QUERY_STRING": "", "SERVER_NAME": "h", "SERVER_PORT": "80",
                   "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
                   "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": length, **headers}
        if rid is not None:
            environ["HTTP_X_REQUEST_ID"] = rid
        got: list[Any] = []
        out = middleware(environ, lambda s, h, e=None: got.append((s, h)))
        content = b"".join(out)
        getattr(out, "close", lambda: None)()
        status, response_headers = got[0]
        sent[0] += 1
        if is_dashboard_path(path):  # answered by the dashboard (no token sent): never a 5xx
            assert status[:1] in "234", status
        else:
            assert (status, content) == ("200 OK", b"ok")
            check_id(response_headers, rid)

    one()
    assert instrument.flush(30)
    assert query(db, "SELECT COUNT(*), TOTAL(request_size_bytes) FROM api_metrics") == \
        [(len(app.calls), float(sum(app.calls)))]
    assert instrument.stats()["backends"][0]["errors_total"] == 0
    FIGURES["bad inputs tried: HTTP requests (WSGI, in process)"] += sent[0]


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"x-read", str(size).encode())]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_asgi_any_request(tmp_path: Path) -> None:
    """The same for ASGI: any text path (lone surrogates too), raw header bytes, chunked bodies."""
    db = tmp_path / "m.db"
    instrument.configure(metrics_db=str(db), flush_interval=0.05)
    middleware = ASGIInstrument(_asgi_app)
    read: list[int] = []

    @settings(QUIET, max_examples=400)
    @given(chunks=st.lists(st.binary(max_size=500), max_size=4), method=methods,
           rid=st.none() | st.binary(max_size=200) | ids.map(
               lambda s: s.encode("latin-1", "replace")),
           headers=st.lists(st.tuples(st.binary(min_size=1, max_size=20),
                                      st.binary(max_size=300)), max_size=5),
           path=st.text(max_size=200), raw_path=st.binary(max_size=200))
    def one(chunks: list[bytes], method: str, rid: bytes | None,
            headers: list[tuple[bytes, bytes]], path: str, raw_path: bytes) -> None:
        if rid is not None:
            headers = [*headers, (b"x-request-id", rid)]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": raw_path,
                 "query_string": b"", "root_path": "", "headers": headers}
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                    for i, c in enumerate(chunks)] or [{"type": "http.request", "body": b""}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        asyncio.run(middleware(scope, receive, send))
        start = sent[0]
        assert start["status"] == 200 and sent[-1]["body"] == b"ok"
        read.append(int(dict(start["headers"])[b"x-read"]))
        first = next((v for k, v in headers if k == b"x-request-id"), None)  # the one used
        check_id([(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]],
                 None if first is None else first.decode("latin-1"))

    one()
    assert instrument.flush(30)
    assert query(db, "SELECT COUNT(*), TOTAL(request_size_bytes) FROM api_metrics") == \
        [(len(read), float(sum(read)))]
    assert instrument.stats()["backends"][0]["errors_total"] == 0
    FIGURES["bad inputs tried: HTTP requests (ASGI, in process)"] += len(read)


def test_million_distinct_paths_bounded(tmp_path: Path) -> None:
    """A million distinct paths: at most 1000 names + __overflow__ anywhere, memory flat."""
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("million_paths.py")),
                          str(tmp_path / "m.db"), "1000000"], capture_output=True, text=True,
                         timeout=300, check=True)
    r = json.loads(out.stdout)
    assert r["stored"] + r["dropped"] == r["sent"] == 1_000_000
    assert all(n <= 1001 for n in r["distinct_names"].values()), r["distinct_names"]
    assert r["distinct_names"]["metric_rollups"] == 1001
    assert r["overflow"] == r["stored"] - 1000
    growth = r["rss_at_end"] - r["rss_at_tenth"]
    assert growth < 8 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB over 900,000 new paths"
    FIGURES["bad inputs tried: distinct paths"] += r["sent"]
    FIGURES["memory growth over 900k new paths (KiB)"] += max(0, growth) // 1024


def test_undecodable_text_is_stored_escaped_not_retried_forever(tmp_path: Path) -> None:
    """Lone surrogates in a path, a timer name and a log line: stored escaped, nothing held back."""
    import logging

    from instrument.logs import StoreHandler

    db = tmp_path / "m.db"
    instrument.configure(metrics_db=str(db), flush_interval=0.05)
    logger = logging.getLogger("reliability.surrogates")
    handler = StoreHandler()
    logger.addHandler(handler)
    try:
        middleware = ASGIInstrument(_asgi_app)
        scope = {"type": "http", "method": "GET", "path": "/caf\udce9", "headers": [],
                 "query_string": b"", "root_path": ""}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            pass

        asyncio.run(middleware(scope, receive, send))
        with instrument.timer("job.\ud800"):
            pass
        logger.warning("file %s is gone", "/data/\udcff.csv")
        with instrument.timer("job.ok"):
            pass
        assert instrument.flush(10)
    finally:
        logger.removeHandler(handler)
    assert query(db, "SELECT endpoint FROM api_metrics") == [("/caf\\udce9",)]
    assert sorted(query(db, "SELECT name FROM call_metrics")) == [("job.\\ud800",), ("job.ok",)]
    assert query(db, "SELECT message FROM logs") == [("file /data/\\udcff.csv is gone",)]
    assert instrument.stats()["backends"][0]["errors_total"] == 0
