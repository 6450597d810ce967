"""Django with ``instrument.django.InstrumentMiddleware`` under real servers, and its example.

The project in tests/django_site runs under gunicorn (two sync workers, with and
without ``--preload``) and uvicorn (two workers) as subprocesses; 2,000 mixed
requests from 8 threads must come back from ``api_metrics`` as exactly the rows
the clients were answered: template, method, status, request and response bytes.
Only the graceful stop flushes (the interval is 10 minutes), so the shutdown path
is what saves them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.django_env import ROOT, load, server, stored, wait_ready
from tests.servers import query, settled_count, werkzeug_server

TOTAL, THREADS = 2000, 8


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("kind", "preload"), [("gunicorn", True), ("gunicorn", False),
                                               ("uvicorn", False)])
def test_every_answered_request_is_stored_exactly(kind: str, preload: bool,
                                                  db_path: Path) -> None:
    """2,000 mixed requests (routes, includes, re_path, CBV, streams, files, 4xx, 5xx, async)."""
    env = {"INSTRUMENT_METRICS_DB": str(db_path), "INSTRUMENT_FLUSH_INTERVAL": "600"}
    stream = "stream" if kind == "gunicorn" else "astream"
    with server(kind, env, preload=preload) as (url, proc):
        wait_ready(url, proc)  # the health check: answered by the kit, never recorded
        answered = load(url, TOTAL, THREADS, stream=stream)
        assert sum(stored(db_path).values()) == 0  # still buffered in the workers
    got = stored(db_path)
    assert got == answered
    pids = {r[0] for r in query(db_path, "SELECT DISTINCT pid FROM api_metrics")}
    # gunicorn's workers both serve; uvicorn's may leave one to take every connection
    assert len(pids) == 2 if kind == "gunicorn" else 1 <= len(pids) <= 2
    assert proc.pid not in pids  # the workers saved their own, the master nothing
    boom = sum(n for row, n in answered.items() if row[0] == "/blog/boom/")
    assert boom > 100 and query(db_path, "SELECT exception, COUNT(*), SUM(error_count) FROM"
                                " api_metrics WHERE exception IS NOT NULL GROUP BY 1") == [
        ("RuntimeError", boom, boom)]
    assert query(db_path, "SELECT SUM(count) FROM metric_rollups") == [(TOTAL,)]
    templates = {row[0] for row in got}
    assert "/shop/sku/(?P<code>[A-Z]{3}\\d{2})/$" in templates and "__unmatched__" in templates


def test_streaming_is_timed_to_the_last_byte(db_path: Path) -> None:
    """Under a real WSGI server a stream's duration covers every chunk; its TTFB only the first."""
    from django.core.wsgi import get_wsgi_application

    with werkzeug_server(get_wsgi_application()) as url:
        started = time.perf_counter()
        r = requests.get(url + "/blog/stream/5/?pause=0.06", timeout=10)
        took = time.perf_counter() - started
        assert r.text.count("chunk") == 5
        f = requests.get(url + "/blog/file/", timeout=10)
        assert settled_count(db_path, 2) == 2
    (ms, ttfb, size, disc), (fsize,) = (
        query(db_path, "SELECT response_time_ms, ttfb_ms, response_size_bytes,"
                       " client_disconnected FROM api_metrics WHERE endpoint LIKE '%stream%'")[0],
        query(db_path, "SELECT response_size_bytes FROM api_metrics WHERE"
                       " endpoint = '/blog/file/'")[0])
    # four pauses after the first chunk; the server closes the response after writing its last
    # byte, so its end may trail the client's by a moment (309.56 against 309.31 ms once)
    assert 300 <= ms <= took * 1000 + 50 and ttfb < ms - 200
    assert size == len(r.content) and disc == 0
    assert fsize == len(f.content) == Path(ROOT / "tests/django_site/blog/views.py").stat().st_size


def test_asgi_stream_timed_to_its_end_and_disconnect_noted(db_path: Path) -> None:
    """Under uvicorn an async stream's duration covers its chunks; a reader that leaves is noted."""
    env = {"INSTRUMENT_METRICS_DB": str(db_path), "INSTRUMENT_FLUSH_INTERVAL": "0.05"}
    with server("uvicorn", env, workers=1) as (url, proc):
        wait_ready(url, proc)
        r = requests.get(url + "/blog/astream/4/?pause=0.06", timeout=10)
        assert r.text.count("achunk") == 4
        with requests.get(url + "/blog/astream/50/?pause=0.05", stream=True, timeout=10) as gone:
            next(gone.iter_content(8))
        time.sleep(0.5)
    rows = query(db_path, "SELECT response_time_ms, ttfb_ms, response_size_bytes,"
                          " client_disconnected, status_code, exception FROM api_metrics"
                          " ORDER BY id")
    assert len(rows) == 2, rows
    assert rows[0][2:] == (len(r.content), 0, 200, None)
    assert rows[0][0] >= 230 and rows[0][1] < rows[0][0] - 150  # TTFB: the first chunk only
    assert rows[1][3:] == (1, 200, None) and 0 < rows[1][2] < 50 * 10  # left: part of the body


@pytest.mark.parametrize(("kind", "mode"), [("gunicorn", "sync"), ("uvicorn", "async")])
def test_a_body_that_fails_is_stored_once_with_its_exception(kind: str, mode: str,
                                                              db_path: Path) -> None:
    """A stream raising mid-body: the server cuts the answer short; one 500 row, its type."""
    env = {"INSTRUMENT_METRICS_DB": str(db_path), "INSTRUMENT_FLUSH_INTERVAL": "0.05"}
    with server(kind, env, workers=1) as (url, proc):
        wait_ready(url, proc)
        with pytest.raises(requests.RequestException):
            requests.get(url + f"/blog/broken/?mode={mode}", timeout=10).content  # noqa: B018
        assert requests.get(url + "/shop/catalog/", timeout=10).ok
        time.sleep(0.5)
    assert query(db_path, "SELECT endpoint, status_code, exception, response_size_bytes"
                          " FROM api_metrics ORDER BY id") == [
        ("/blog/broken/", 500, "ValueError", 6), ("/shop/catalog/", 200, None, 28)]


@pytest.mark.parametrize(("kind", "size"), [("uvicorn", 150), ("gunicorn", 0)])
def test_chunked_upload_sized_as_django_read_it(kind: str, size: int, db_path: Path) -> None:
    """No Content-Length: ASGI Django spools the whole body; WSGI Django reads none of it."""
    env = {"INSTRUMENT_METRICS_DB": str(db_path), "INSTRUMENT_FLUSH_INTERVAL": "0.05"}

    def body() -> Iterator[bytes]:
        yield b"a" * 100
        yield b"b" * 50

    with server(kind, env, workers=1) as (url, proc):
        wait_ready(url, proc)
        assert requests.post(url + "/blog/upload/", data=body(), timeout=10).text == f"got {size}"
        time.sleep(0.5)
    assert query(db_path, "SELECT request_size_bytes FROM api_metrics") == [(size,)]


def test_settings_dict_under_gunicorn_preload(tmp_path: Path, db_path: Path) -> None:
    """settings.INSTRUMENT, read in the master (--preload), holds in the forked workers."""
    other = tmp_path / "from-dict.db"
    env = {"INSTRUMENT_METRICS_DB": str(db_path),
           "DJSITE_INSTRUMENT": f"INSTRUMENT_METRICS_DB={other},request_id=false"}
    with server("gunicorn", env) as (url, proc):
        wait_ready(url, proc)
        assert "X-Request-ID" not in requests.get(url + "/shop/catalog/", timeout=10).headers
    assert query(other, "SELECT endpoint FROM api_metrics") == [("/shop/catalog/",)]
    assert not db_path.exists()


def test_example_project_under_gunicorn(tmp_path: Path) -> None:
    """examples/django_site: served by gunicorn, its requests stored by URL pattern."""
    db = tmp_path / "metrics.db"
    env = {"INSTRUMENT_METRICS_DB": str(db), "INSTRUMENT_DASHBOARD_TOKEN": "e" * 32}
    with server("gunicorn", env, workers=1, app_dir=ROOT / "examples/django_site",
                target="mysite.wsgi:application") as (url, proc):
        wait_ready(url, proc)
        with requests.Session() as s:
            assert s.get(url + "/notes/1/", timeout=10).json()["text"] == "buy milk"
            assert s.get(url + "/notes/9/", timeout=10).status_code == 404
            assert s.get(url + "/notes/export/", timeout=10).text.startswith("1,buy milk")
            assert s.get(url + "/healthz", timeout=10).status_code == 404  # excluded
            summary = s.get(url + "/monitoring/api/v1/monitoring/metrics/summary?hours=1",
                            headers={"Authorization": "Bearer " + "e" * 32}, timeout=10)
            assert summary.status_code == 200
    assert query(db, "SELECT endpoint, status_code FROM api_metrics ORDER BY id") == [
        ("/notes/<int:note_id>/", 200), ("/notes/<int:note_id>/", 404), ("/notes/export/", 200)]


def test_example_project_passes_django_checks() -> None:
    import subprocess

    done = subprocess.run([sys.executable, "manage.py", "check"],
                          cwd=ROOT / "examples/django_site", capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0 and "no issues" in done.stdout, done.stderr

