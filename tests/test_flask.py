"""Flask under werkzeug's threaded server: what lands in api_metrics for each kind of request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask, Response, request

import instrument
from instrument.flask import Instrument
from tests.servers import in_threads, query, settled_count, werkzeug_server

STREAM_CHUNKS = 5
STREAM_CHUNK = b"s" * 3000
STREAM_PAUSE = 0.08


class Boom(LookupError):
    """The exception the failing view raises."""


def make_app() -> Flask:
    app = Flask("flask_under_test")

    @app.get("/items/<int:item_id>")
    def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.delete("/items/<int:item_id>")
    def delete_item(item_id: int) -> tuple[str, int]:
        return "", 204

    @app.get("/boom")
    def boom() -> str:
        raise Boom("view failed")

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[bytes]:
            for i in range(STREAM_CHUNKS):
                if i:
                    time.sleep(STREAM_PAUSE)
                yield STREAM_CHUNK

        return Response(chunks(), mimetype="application/octet-stream")

    @app.post("/upload")
    def upload() -> dict[str, object]:
        data = request.get_data()
        return {"received": len(data), "te": request.headers.get("Transfer-Encoding")}

    Instrument(app)
    return app


@pytest.fixture
def url() -> Iterator[str]:
    with werkzeug_server(make_app()) as base:
        yield base


def test_route_template_method_and_status(url: str, db_path: Path) -> None:
    """Requests are named by the Flask rule, with their method, status and response bytes."""
    sent = 0
    with requests.Session() as s:
        for i in range(5):
            r = s.get(f"{url}/items/{i}")
            assert r.status_code == 200
            sent += len(r.content)
        assert s.delete(f"{url}/items/7").status_code == 204
    assert settled_count(db_path, 6) == 6
    rows = query(db_path, "SELECT endpoint, method, status_code, COUNT(*),"
                          " SUM(response_size_bytes), SUM(error_count) FROM api_metrics"
                          " GROUP BY 1, 2, 3 ORDER BY 2 DESC")
    assert rows == [("/items/<int:item_id>", "GET", 200, 5, sent, 0),
                    ("/items/<int:item_id>", "DELETE", 204, 1, 0, 0)]


def test_unmatched_paths_fold_into_one_name(url: str, db_path: Path) -> None:
    """Every 404 is recorded under ``__unmatched__``, never under its raw path."""
    with requests.Session() as s:
        for path in ("/nope", "/nope/1", "/items/not-an-int", "/x/y/z"):
            assert s.get(url + path).status_code == 404
    assert settled_count(db_path, 4) == 4
    rows = query(db_path, "SELECT endpoint, status_code, COUNT(*) FROM api_metrics GROUP BY 1, 2")
    assert rows == [("__unmatched__", 404, 4)]


def test_view_exception_recorded_as_500_with_its_type(url: str, db_path: Path) -> None:
    """A view that raises is answered 500 by Flask and recorded as a 500 naming the exception."""
    assert requests.get(f"{url}/boom").status_code == 500
    assert settled_count(db_path, 1) == 1
    rows = query(db_path, "SELECT endpoint, method, status_code, error_count, exception"
                          " FROM api_metrics")
    assert rows == [("/boom", "GET", 500, 1, "Boom")]


def test_concurrent_clients_lose_nothing(url: str, db_path: Path) -> None:
    """8 client threads x 500 requests give exactly 4000 rows and 4000 in the rollups."""
    threads, per_thread = 8, 500
    ok = [0] * threads

    def client(n: int) -> None:
        with requests.Session() as s:
            for i in range(per_thread):
                if s.get(f"{url}/items/{n * per_thread + i}").status_code == 200:
                    ok[n] += 1

    in_threads(client, threads, timeout=90)
    assert sum(ok) == threads * per_thread
    assert settled_count(db_path, 4000) == 4000
    assert query(db_path, "SELECT endpoint, COUNT(*) FROM api_metrics GROUP BY 1") == [
        ("/items/<int:item_id>", 4000)]
    assert query(db_path, "SELECT SUM(count) FROM metric_rollups WHERE kind = 'http'") == [
        (4000,)]
    assert query(db_path, "SELECT SUM(count) FROM metric_rollup_buckets") == [(4000,)]
    assert instrument.stats()["dropped"] == 0


def test_streamed_response_timed_to_its_end(url: str, db_path: Path) -> None:
    """A streamed response lasts until its last chunk, while time to first byte stays small."""
    r = requests.get(f"{url}/stream")
    assert r.content == STREAM_CHUNK * STREAM_CHUNKS
    assert "Content-Length" not in r.headers
    assert settled_count(db_path, 1) == 1
    [(ms, ttfb, size, disconnected)] = query(
        db_path, "SELECT response_time_ms, ttfb_ms, response_size_bytes, client_disconnected"
                 " FROM api_metrics")
    stream_ms = (STREAM_CHUNKS - 1) * STREAM_PAUSE * 1000
    assert ms >= stream_ms
    assert ttfb < stream_ms / 4
    assert size == len(STREAM_CHUNK) * STREAM_CHUNKS
    assert disconnected == 0
    assert query(db_path, "SELECT response_bytes FROM metric_rollups") == [(size,)]


def test_chunked_upload_sized_as_read(url: str, db_path: Path) -> None:
    """A chunked upload (no Content-Length) and a plain one are both counted to the byte."""
    parts = [b"a" * 10_000, b"b" * 7, b"c" * 65_536, b"d"]

    def body() -> Iterator[bytes]:
        yield from parts

    chunked = requests.post(f"{url}/upload", data=body())
    assert chunked.json() == {"received": sum(map(len, parts)), "te": "chunked"}
    plain = requests.post(f"{url}/upload", data=b"p" * 1234)
    assert plain.json() == {"received": 1234, "te": None}
    assert settled_count(db_path, 2) == 2
    sizes = sorted(r[0] for r in query(db_path, "SELECT request_size_bytes FROM api_metrics"))
    assert sizes == [1234, sum(map(len, parts))]
    assert query(db_path, "SELECT request_bytes FROM metric_rollups") == [(1234 + 75_544,)]
