"""Structured logging: JSON and console lines, redaction, request correlation, and log shipping."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import logging.handlers
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from flask import Flask
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import instrument
from instrument import asgi
from instrument.core.buffer import SLOTS, Recorder
from instrument.core.suppress import suppressed
from instrument.flask import Instrument
from instrument.logs import (
    REDACTED,
    ConsoleFormatter,
    ContextFilter,
    JsonFormatter,
    StoreHandler,
    request_context,
    setup_logging,
)
from instrument.testing import MemoryBackend
from tests.servers import uvicorn_server, werkzeug_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Give the root logger back its handlers and level after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def one_line(formatter: logging.Formatter, emit: Any) -> str:
    """Format whatever ``emit(logger)`` logs through a private logger and handler."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    log = logging.getLogger(f"t.{id(stream)}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        emit(log)
    finally:
        log.removeHandler(handler)
    return stream.getvalue()


# -- formatters ---------------------------------------------------------------------
def test_json_line_has_utc_timestamp_level_logger_and_message() -> None:
    """A line is one JSON object with an ISO 8601 UTC timestamp, level, logger and message."""
    before = datetime.now(timezone.utc)
    line = one_line(JsonFormatter(), lambda log: log.warning("disk %s%% full", 91))
    data = json.loads(line)
    stamp = datetime.fromisoformat(data["timestamp"].replace("Z", "+00:00"))
    assert data["timestamp"].endswith("Z") and stamp.utcoffset() is not None
    assert abs((stamp - before).total_seconds()) < 5
    assert data["level"] == "WARNING" and data["message"] == "disk 91% full"
    assert data["logger"].startswith("t.")
    assert "request_id" not in data  # logged outside any request


def test_exception_carries_type_message_and_traceback() -> None:
    """logger.exception() gives the exception's type, message and full traceback."""
    def emit(log: logging.Logger) -> None:
        try:
            {}["missing"]
        except KeyError:
            log.exception("lookup failed")

    data = json.loads(one_line(JsonFormatter(), emit))
    assert data["exception"]["type"] == "KeyError"
    assert data["exception"]["message"] == "'missing'"
    assert "Traceback (most recent call last)" in data["exception"]["traceback"]
    assert 'emit\n    {}["missing"]' in data["exception"]["traceback"]


def test_extra_fields_and_static_fields_are_added() -> None:
    """extra= fields appear as keys; ones that clash with ours get an extra_ prefix."""
    line = one_line(JsonFormatter(fields={"service": "api"}),
                    lambda log: log.info("hi", extra={"user_id": 7, "level": "custom",
                                                      "when": datetime(2024, 1, 1)}))
    data = json.loads(line)
    assert data["user_id"] == 7 and data["extra_level"] == "custom"
    assert data["level"] == "INFO" and data["service"] == "api"
    assert data["when"] == "2024-01-01 00:00:00"  # not JSON-native: stringified, not dropped


def test_secrets_are_redacted_in_message_extra_and_traceback() -> None:
    """Values of password/token/authorization/secret keys never reach the line."""
    def emit(log: logging.Logger) -> None:
        log.info("login password=hunter2 Authorization: Bearer abc.def",
                 extra={"api_token": "t0k", "form": {"db_password": "pw", "name": "ann"},
                        "headers": [{"Authorization": "Basic xyz"}]})
        try:
            raise PermissionError("bad secret='s3cr3t'")
        except PermissionError:
            log.exception('client_secret: "k3y"')

    json_out = one_line(JsonFormatter(), emit)
    console_out = one_line(ConsoleFormatter(), emit)
    for out in (json_out, console_out):
        for secret in ("hunter2", "abc.def", "t0k", '"pw"', "xyz", "s3cr3t", "k3y"):
            assert secret not in out, (secret, out)
    first = json.loads(json_out.splitlines()[0])
    assert first["message"] == f"login password={REDACTED} Authorization: Bearer {REDACTED}"
    assert first["form"] == {"db_password": REDACTED, "name": "ann"}


def test_redaction_patterns_are_configurable() -> None:
    """Custom patterns replace the defaults; an empty list turns redaction off."""
    emit = lambda log: log.info("ssn=123 token=abc", extra={"ssn": "123"})  # noqa: E731
    custom = json.loads(one_line(JsonFormatter(redact=["ssn"]), emit))
    assert custom["message"] == f"ssn={REDACTED} token=abc" and custom["ssn"] == REDACTED
    off = json.loads(one_line(JsonFormatter(redact=[]), emit))
    assert off["message"] == "ssn=123 token=abc"


def test_console_format_is_readable() -> None:
    """The console line reads time, level, logger, [id method route], message, fields."""
    def emit(log: logging.Logger) -> None:
        with request_context("r-1", route="/items/{id}", method="GET"):
            log.info("served %d items", 3, extra={"cache": "hit"})

    line = one_line(ConsoleFormatter(), emit).rstrip("\n")
    assert "INFO" in line and "[r-1 GET /items/{id}] served 3 items cache='hit'" in line
    assert line[:4].isdigit() and not line.startswith("{")


# -- setup_logging with existing handlers and libraries -------------------------------
def test_setup_logging_keeps_user_handlers_and_is_idempotent() -> None:
    """Calling it twice leaves one handler of ours next to the user's own, untouched."""
    root = logging.getLogger()
    user_stream = io.StringIO()
    user = logging.StreamHandler(user_stream)
    user.setFormatter(logging.Formatter("USER %(message)s"))
    root.addHandler(user)
    ours = io.StringIO()
    setup_logging("INFO", stream=io.StringIO(), store=False)
    setup_logging("INFO", stream=ours, store=False)
    logging.getLogger("lib.x").info("once")
    assert [json.loads(x)["message"] for x in ours.getvalue().splitlines()] == ["once"]
    assert user_stream.getvalue() == "USER once\n"
    setup_logging("INFO", stream=ours, store=False, format_existing=True)
    logging.getLogger("lib.x").info("twice")
    assert json.loads(user_stream.getvalue().splitlines()[-1])["message"] == "twice"


def test_library_loggers_keep_working() -> None:
    """A third-party logger (urllib3 here, through requests) shows up as JSON unchanged."""
    stream = io.StringIO()
    setup_logging("DEBUG", stream=stream, store=False)
    with pytest.raises(requests.ConnectionError):
        requests.get("http://127.0.0.1:9/", timeout=2)  # port 9 (discard) is closed
    lines = json_lines(stream)
    assert any(x["logger"].startswith("urllib3") for x in lines)
    assert logging.getLogger().level == logging.DEBUG


def test_context_filter_keeps_the_id_for_a_queue_listener() -> None:
    """Formatted in a listener thread, a line still names the request that logged it."""
    q: queue.Queue[logging.LogRecord] = queue.Queue()
    stream = io.StringIO()
    target = logging.StreamHandler(stream)
    target.setFormatter(JsonFormatter())
    listener = logging.handlers.QueueListener(q, target)
    qh = logging.handlers.QueueHandler(q)
    qh.addFilter(ContextFilter())
    log = logging.getLogger("t.queue")
    log.propagate = False
    log.addHandler(qh)
    listener.start()
    try:
        with request_context("q-1"):
            log.warning("queued")
    finally:
        listener.stop()
        log.removeHandler(qh)
    assert json_lines(stream)[0]["request_id"] == "q-1"


# -- correlation through real servers --------------------------------------------------
def test_werkzeug_lines_carry_their_request_across_threads_and_decorators(
        memory: MemoryBackend) -> None:
    """Concurrent Flask requests log lines whose id, route and method are their own."""
    stream = io.StringIO()
    setup_logging("INFO", stream=stream, store=False)
    log = logging.getLogger("app.views")
    n = 12
    barrier = threading.Barrier(n, timeout=20)

    @instrument.timed
    def helper(token: str) -> None:
        log.info("helper %s", token)

    app = Flask(__name__)

    @app.get("/work/<token>")
    def work(token: str) -> str:
        log.info("start %s", token)
        barrier.wait()
        helper(token)
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(log.info, "thread %s", token))
        t.start()
        t.join()
        log.info("end %s", token)
        return token

    Instrument(app)
    with werkzeug_server(app) as url, ThreadPoolExecutor(n) as pool:
        statuses = list(pool.map(lambda i: requests.get(
            f"{url}/work/{i}", headers={"X-Request-ID": f"w-{i}"}, timeout=30).status_code,
            range(n)))
    assert statuses == [200] * n
    lines = [x for x in json_lines(stream) if x["logger"] == "app.views"]
    assert len(lines) == 4 * n
    for line in lines:
        token = line["message"].split()[-1]
        assert line["request_id"] == f"w-{token}", line
        assert line["route"] == "/work/<token>" and line["method"] == "GET"


def test_uvicorn_lines_carry_their_request_across_await_and_threadpool(
        memory: MemoryBackend) -> None:
    """Interleaved async requests keep their ids across awaits and run_in_threadpool."""
    stream = io.StringIO()
    setup_logging("INFO", stream=stream, store=False)
    log = logging.getLogger("app.async")
    n = 20

    async def endpoint(request: Request) -> PlainTextResponse:
        token = request.path_params["token"]
        log.info("start %s", token)
        await asyncio.sleep(0.01 * (n - int(token)) / n)
        await run_in_threadpool(log.info, "pool %s", token)
        log.info("end %s", token)
        return PlainTextResponse(token)

    app = Starlette(routes=[Route("/a/{token}", endpoint)])
    app.add_middleware(asgi.InstrumentMiddleware)

    async def client(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            rs = await asyncio.gather(*(c.get(f"/a/{i}", headers={"X-Request-ID": f"u-{i}"})
                                        for i in range(n)))
        return [r.status_code for r in rs]

    with uvicorn_server(app) as url:
        assert asyncio.run(client(url)) == [200] * n
    lines = [x for x in json_lines(stream) if x["logger"] == "app.async"]
    assert len(lines) == 3 * n
    for line in lines:
        token = line["message"].split()[-1]
        assert line["request_id"] == f"u-{token}", line
        assert line["route"] == "/a/{token}" and line["method"] == "GET"


# -- shipping through the buffer --------------------------------------------------------
def test_store_handler_ships_records_to_backends(memory: MemoryBackend) -> None:
    """A record reaches batch.other['log'] with message, context, exception and extras."""
    setup_logging("INFO", stream=io.StringIO())
    with request_context("s-1", route="/r", method="POST"):
        try:
            raise ValueError("nope")
        except ValueError:
            logging.getLogger("app.store").exception("failed token=abc", extra={"n": 1})
    assert instrument.flush(5.0)
    [sample] = [s for b in memory.batches for s in b.other.get("log", [])
                if s[4] == "app.store"]
    kind, created, levelno, levelname, _, msg, exc, extra, rid, route, method = sample
    assert (kind, levelno, levelname, rid, route, method) == (
        "log", logging.ERROR, "ERROR", "s-1", "/r", "POST")
    assert msg == f"failed token={REDACTED}" and abs(created - time.time()) < 10
    assert "ValueError: nope" in exc and json.loads(extra) == {"n": 1}


def test_store_handler_never_blocks_and_counts_drops() -> None:
    """With the handler lock held elsewhere and a full buffer, emit returns and counts drops."""
    rec = Recorder(capacity=16)
    handler = StoreHandler(recorder=rec)
    log = logging.getLogger("t.drops")
    log.propagate = False
    log.addHandler(handler)
    handler.acquire()  # a stdlib Handler would wait on this lock in handle()
    try:
        total = rec.cap + 84  # a log line takes one slot of the 16 requests' worth
        worker = threading.Thread(target=lambda: [log.warning("x %d", i) for i in range(total)])
        worker.start()
        worker.join(10)
        assert not worker.is_alive()
    finally:
        handler.release()
        log.removeHandler(handler)
    assert len(rec.buf) == rec.cap == 16 * SLOTS
    assert handler.dropped == 84 and rec.dropped == 84


def test_kit_threads_and_a_stopped_kit_ship_nothing(memory: MemoryBackend) -> None:
    """Records logged under the kit's suppress flag, or while the kit is off, are not shipped."""
    handler = StoreHandler()
    log = logging.getLogger("t.suppressed")
    log.propagate = False
    log.addHandler(handler)
    try:
        token = suppressed.set(True)
        log.warning("from the flusher")
        suppressed.reset(token)
        instrument.configure(enabled=False)
        log.warning("kit off")
        assert len(instrument._runtime.recorder.buf) == 0
        instrument.configure(backends=[memory])
        log.warning("kit on")
    finally:
        log.removeHandler(handler)
    assert instrument.flush(5.0)
    messages = [s[5] for b in memory.batches for s in b.other.get("log", [])]
    assert messages == ["kit on"]


def test_setup_logging_store_fills_the_sqlite_logs_table(db_path: Path) -> None:
    """With the default SQLite backend, lines land in the logs table with their context."""
    instrument.configure(flush_interval=0.05)
    setup_logging("INFO", stream=io.StringIO())
    with request_context("db-1", route="/x", method="GET"):
        logging.getLogger("app.db").info("stored %s", "line", extra={"k": [1, 2]})
    logging.getLogger("app.db").debug("below the level")
    assert instrument.flush(5.0)
    conn = sqlite3.connect(db_path)
    rows = conn.execute("SELECT level, logger, message, request_id, route, method, extra"
                        " FROM logs").fetchall()
    conn.close()
    assert rows == [("INFO", "app.db", "stored line", "db-1", "/x", "GET", '{"k": [1, 2]}')]


def test_benchmark_script_quick_mode(tmp_path: Path) -> None:
    """benchmarks/logging_bench.py --quick runs and writes every figure it reports."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "logging_bench.py"),
                           "--quick", "--json", str(out)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert set(data["log_call_us"]) == {"stdlib", "json", "json+store"}
    assert data["sqlite_lines_per_s"] > 0
    assert data["search_ms"]["p95"] > 0
    assert set(data["request_id_us"]) == {"wsgi_off", "wsgi_on", "asgi_off", "asgi_on"}


def test_background_context_without_route_or_method() -> None:
    """request_context() for a job gives lines an id and leaves out the empty route and method."""
    def emit(log: logging.Logger) -> None:
        with request_context() as rid:
            log.info("job step")
        assert rid and log.name

    data = json.loads(one_line(JsonFormatter(), emit))
    assert data["request_id"] and "method" not in data and "route" not in data
