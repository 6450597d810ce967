"""Flask bodies the adapter hands over as lists, and every case that keeps werkzeug's own path."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask, Response, make_response
from werkzeug.test import create_environ
from werkzeug.wsgi import ClosingIterator

from instrument.flask import Instrument
from tests.servers import query, settled_count, werkzeug_server

pytestmark = pytest.mark.usefixtures("both_exchanges")  # compiled and pure-Python exchange

TEXT = "héllo, wörld"
closed = threading.Event()


class PlainResponse(Response):
    """A response class the app chose before the kit was added."""

    default_mimetype = "text/plain"


def make_app() -> Flask:
    app = Flask("flask_bodies")
    app.response_class = PlainResponse

    @app.route("/text", methods=["GET", "HEAD"])
    def text() -> str:
        return TEXT

    @app.get("/closing")
    def closing() -> Response:
        resp = make_response("closing body")
        resp.call_on_close(closed.set)
        return resp

    @app.get("/str-chunks")
    def str_chunks() -> Response:
        return Response(["ab", "cd", "é"])

    @app.get("/passthrough")
    def passthrough() -> Response:
        return Response([b"raw", b"bytes"], direct_passthrough=True)

    @app.get("/empty")
    def empty() -> tuple[str, int]:
        return "", 204

    Instrument(app)
    return app


@pytest.fixture
def url() -> Iterator[str]:
    closed.clear()
    with werkzeug_server(make_app()) as base:
        yield base



def test_response_class_keeps_the_apps_own() -> None:
    """The adapter derives from the app's response class, so views still build that class."""
    app = make_app()
    assert issubclass(app.response_class, PlainResponse)
    assert app.response_class is not PlainResponse
    with app.test_request_context():
        assert isinstance(make_response("x"), PlainResponse)
    other = Flask("second")
    other.response_class = PlainResponse
    Instrument(other)
    assert other.response_class is app.response_class  # one subclass per base, not per app


def test_whole_bytes_body_goes_out_as_a_list_and_streams_do_not() -> None:
    """A bytes body held whole is handed over as its list; streams and on-close work are not."""
    cls = make_app().response_class
    environ = create_environ("/", method="GET")
    whole = cls(TEXT)
    assert whole.get_app_iter(environ) == [TEXT.encode()]
    assert isinstance(whole.get_app_iter(environ), list)
    streamed = cls(iter([b"a", b"b"]))
    assert isinstance(streamed.get_app_iter(environ), ClosingIterator)
    with_callback = cls("x")
    with_callback.call_on_close(lambda: None)
    assert isinstance(with_callback.get_app_iter(environ), ClosingIterator)
    head = cls(TEXT)
    assert list(head.get_app_iter(create_environ("/", method="HEAD"))) == []


def test_bodies_arrive_whole_and_are_sized(url: str, db_path: Path) -> None:
    """Each kind of body reaches the client intact and is recorded with its exact byte count."""
    with requests.Session() as s:
        r = s.get(f"{url}/text")
        assert r.content == TEXT.encode() and r.headers["Content-Type"].startswith("text/plain")
        assert r.headers["Content-Length"] == str(len(TEXT.encode()))
        assert s.get(f"{url}/str-chunks").content == "abcdé".encode()
        assert s.get(f"{url}/passthrough").content == b"rawbytes"
        assert s.get(f"{url}/empty").status_code == 204
        head = s.head(f"{url}/text")
        assert head.status_code == 200 and head.content == b""
    assert settled_count(db_path, 5) == 5
    rows = query(db_path, "SELECT endpoint, method, status_code, response_size_bytes"
                          " FROM api_metrics")
    # A sample is recorded when the server closes the body, which can come after the client
    # already sent the next request, so the rows' order is not the requests' order.
    assert sorted(rows) == sorted([("/text", "GET", 200, len(TEXT.encode())),
                                   ("/str-chunks", "GET", 200, len("abcdé".encode())),
                                   ("/passthrough", "GET", 200, 8),
                                   ("/empty", "GET", 204, 0),
                                   ("/text", "HEAD", 200, 0)])


def test_call_on_close_still_runs(url: str, db_path: Path) -> None:
    """A function registered with ``call_on_close`` runs after the response, as without the kit."""
    r = requests.get(f"{url}/closing")
    assert r.content == b"closing body"
    assert closed.wait(5.0)
    assert settled_count(db_path, 1) == 1
    assert query(db_path, "SELECT endpoint, response_size_bytes FROM api_metrics") == [
        ("/closing", len(b"closing body"))]
