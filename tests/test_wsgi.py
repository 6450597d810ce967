"""The plain WSGI middleware: naming without a router, guards, exclusions, errors, kill switch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from werkzeug.test import create_environ

import instrument
from instrument.flask import Instrument
from instrument.testing import FailingBackend
from instrument.wsgi import InstrumentMiddleware
from tests.servers import query, row_count, settled_count, wait_until, werkzeug_server

pytestmark = pytest.mark.usefixtures("both_exchanges")  # compiled and pure-Python exchange


def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A router-less WSGI app that answers every path."""
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def fake_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
    return lambda data: None


def test_plain_app_named_by_path(db_path: Path) -> None:
    """Without a framework router the request path is the endpoint name."""
    with werkzeug_server(InstrumentMiddleware(hello)) as url, requests.Session() as s:
        for path in ("/a/1", "/a/2", "/a/2"):
            assert s.get(url + path).text == path
    assert settled_count(db_path, 3) == 3
    rows = query(db_path, "SELECT endpoint, status_code, COUNT(*), SUM(response_size_bytes)"
                          " FROM api_metrics GROUP BY 1, 2 ORDER BY 1")
    assert rows == [("/a/1", 200, 1, 4), ("/a/2", 200, 2, 8)]


def test_max_routes_overflow_folds_new_names(db_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond INSTRUMENT_MAX_ROUTES distinct names, new ones are stored as ``__overflow__``."""
    monkeypatch.setenv("INSTRUMENT_MAX_ROUTES", "3")
    paths = ["/p/0", "/p/1", "/p/2", "/p/3", "/p/4", "/p/0", "/p/5"]
    with werkzeug_server(InstrumentMiddleware(hello)) as url, requests.Session() as s:
        for n, path in enumerate(paths, 1):
            assert s.get(url + path).status_code == 200
            assert settled_count(db_path, n) == n  # one at a time: the first three win
    rows = query(db_path, "SELECT endpoint, COUNT(*) FROM api_metrics GROUP BY 1 ORDER BY 1")
    assert rows == [("/p/0", 2), ("/p/1", 1), ("/p/2", 1), ("__overflow__", 3)]
    rollups = "SELECT name, SUM(count) FROM metric_rollups GROUP BY 1 ORDER BY 1"
    assert query(db_path, rollups) == rows


def test_excluded_paths_are_not_recorded(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """INSTRUMENT_EXCLUDE_PATHS skips exact paths and ``*`` prefixes, and nothing else."""
    monkeypatch.setenv("INSTRUMENT_EXCLUDE_PATHS", "/health, /static/*")
    with werkzeug_server(InstrumentMiddleware(hello)) as url, requests.Session() as s:
        for path in ("/health", "/static/app.css", "/static/js/x.js", "/healthz", "/kept"):
            assert s.get(url + path).status_code == 200
    assert settled_count(db_path, 2) == 2
    rows = query(db_path, "SELECT endpoint FROM api_metrics ORDER BY endpoint")
    assert rows == [("/healthz",), ("/kept",)]


def test_exception_passes_through_unchanged(db_path: Path) -> None:
    """An exception from the app reaches the server as the same object with its traceback."""
    error = KeyError("missing")

    def broken(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        raise error

    app = InstrumentMiddleware(broken)
    with pytest.raises(KeyError) as caught:
        app(create_environ("/broken", method="POST", data=b"xyz"), fake_start_response)
    assert caught.value is error
    assert caught.value.__traceback__ is not None
    assert caught.traceback[-1].name == "broken"
    assert settled_count(db_path, 1) == 1
    assert query(db_path, "SELECT endpoint, method, status_code, error_count, exception"
                          " FROM api_metrics") == [("/broken", "POST", 500, 1, "KeyError")]


def test_exception_while_streaming_passes_through(db_path: Path) -> None:
    """An exception raised mid-body propagates unchanged and records a 500 with the bytes so far."""
    error = ConnectionAbortedError("upstream went away")

    def half(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"12345"
        raise error

    body = InstrumentMiddleware(half)(create_environ("/half"), fake_start_response)
    got = []
    with pytest.raises(ConnectionAbortedError) as caught:
        for chunk in body:
            got.append(chunk)
    body.close()  # type: ignore[attr-defined]  # servers always close, even after an error
    assert got == [b"12345"]
    assert caught.value is error
    assert settled_count(db_path, 1) == 1
    assert query(db_path, "SELECT status_code, response_size_bytes, exception FROM api_metrics"
                 ) == [(500, 5, "ConnectionAbortedError")]


def test_exception_under_server_recorded_as_500(db_path: Path) -> None:
    """Behind a real server, a crashing plain app is answered 500 and recorded as 500."""

    def broken(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        raise ZeroDivisionError("no")

    with werkzeug_server(InstrumentMiddleware(broken)) as url:
        assert requests.get(f"{url}/div").status_code == 500
    assert settled_count(db_path, 1) == 1
    assert query(db_path, "SELECT endpoint, status_code, exception FROM api_metrics") == [
        ("/div", 500, "ZeroDivisionError")]


def test_kill_switch_returns_the_app_itself(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """INSTRUMENT_ENABLED=false: the middleware is the app itself and nothing is stored."""
    monkeypatch.setenv("INSTRUMENT_ENABLED", "false")
    assert InstrumentMiddleware(hello) is hello
    flask_app = Flask("killed")
    flask_app.get("/x")(lambda: "x")
    Instrument(flask_app)
    assert "wsgi_app" not in vars(flask_app)  # still the class's own method, not re-bound
    assert not flask_app.before_request_funcs
    assert "instrument" not in flask_app.extensions
    with werkzeug_server(InstrumentMiddleware(hello)) as url, requests.Session() as s:
        assert s.get(f"{url}/off").text == "/off"
    with werkzeug_server(flask_app) as url:
        assert requests.get(f"{url}/x").text == "x"
    assert instrument.flush(2.0)
    assert not instrument.stats()["enabled"]
    assert not db_path.exists() or row_count(db_path) == 0


def test_failing_backend_retried_without_breaking_requests() -> None:
    """A backend that raises twice leaves every request answered and gets every row on retry."""
    backend = FailingBackend(failures=2)
    instrument.configure(backends=[backend], flush_interval=0.05)
    with werkzeug_server(InstrumentMiddleware(hello)) as url, requests.Session() as s:
        statuses = [s.get(f"{url}/r/{i % 3}").status_code for i in range(30)]
    assert statuses == [200] * 30
    assert instrument.flush(10.0)
    wait_until(lambda: instrument.flush(5.0) and len(backend.requests) >= 30, what="30 rows")
    assert len(backend.requests) == 30
    assert backend.attempts == 2 + len(backend.batches)  # two refusals, then every batch once
    assert backend.get_sample_value("http", "/r/0") == 10
    [health] = instrument.stats()["backends"]
    assert health["healthy"] and health["errors_total"] == 2
    assert health["pending_batches"] == 0 and health["samples_lost"] == 0
    assert "injected failure 2" in health["last_error"]
