"""The route-aware sampling profiler under real servers: werkzeug (threads) and uvicorn (async)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import requests
from fastapi import FastAPI
from flask import Flask

import instrument
from instrument.core.runtime import runtime
from instrument.fastapi import instrument_app
from instrument.flask import Instrument
from tests.dashboard_fixtures import TOKEN, running_server
from tests.servers import in_threads, query, uvicorn_server, wait_until, werkzeug_server

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def stacks(db: Path, route: str) -> Counter[str]:
    return Counter(dict(query(db, "SELECT stack, sum(samples) FROM profile_stacks"
                                  " WHERE route = ? GROUP BY stack", route)))


def share_with(found: Counter[str], name: str) -> float:
    total = sum(found.values())
    return sum(n for s, n in found.items() if name in s) / total if total else 0.0


def slow_part() -> None:
    time.sleep(0.03)  # a sampled thread is seen waiting here: wall-clock, as a user wants


def work_app() -> Flask:
    """An instrumented Flask app whose one route, /work, spends its time in slow_part()."""
    app = Flask(__name__)

    @app.get("/work")
    def work() -> str:
        slow_part()
        return "done"

    Instrument(app)
    return app


def busy_part(seconds: float) -> int:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:  # on the CPU: an event loop only shows running coroutines
        n += 1
    return n


def test_flask_samples_land_on_their_route(db_path: Path) -> None:
    """A threaded WSGI server: the slow route's samples are mostly in slow_part, and no
    sample of the fast route is."""
    instrument.configure(metrics_db=str(db_path), flush_interval=0.2, profiler=True,
                         profiler_hz=200)
    app = Flask(__name__)

    @app.get("/slow/<int:n>")
    def slow(n: int) -> str:
        slow_part()
        return str(n)

    @app.get("/fast")
    def fast() -> str:
        return "fast"

    Instrument(app)
    with werkzeug_server(app) as url:
        def client(c: int) -> None:
            with requests.Session() as s:
                for i in range(30):
                    assert s.get(f"{url}/slow/{i}", timeout=10).status_code == 200
                    assert s.get(f"{url}/fast", timeout=10).status_code == 200

        in_threads(client, 3)
        assert runtime.profiler is not None and runtime.profiler.alive
        stats = runtime.profiler.stats()
        instrument.shutdown()
    slow_stacks = stacks(db_path, "/slow/<int:n>")
    assert sum(slow_stacks.values()) >= 50
    assert share_with(slow_stacks, "test_profiler:slow_part") > 0.5
    assert all("slow_part" not in s for s in stacks(db_path, "/fast"))
    assert all(s.split(";")[-1] for s in slow_stacks)  # outermost first, leaf last
    assert stats["unattributed"] > 0  # the server's own threads between requests
    assert query(db_path, "SELECT DISTINCT pid FROM profile_stacks") == [(os.getpid(),)]


def test_async_handlers_are_sampled_while_they_run(db_path: Path) -> None:
    """uvicorn: a coroutine busy on the CPU is attributed to its route through the
    middleware's own coroutine frame."""
    instrument.configure(metrics_db=str(db_path), flush_interval=0.2, profiler=True,
                         profiler_hz=200)
    app = FastAPI()

    @app.get("/spin/{n}")
    async def spin(n: int) -> dict[str, int]:
        return {"n": busy_part(0.03)}

    @app.get("/idle")
    async def idle() -> dict[str, bool]:
        return {"ok": True}

    instrument_app(app)
    with uvicorn_server(app) as url, httpx.Client() as client:
        for i in range(40):
            assert client.get(f"{url}/spin/{i}").status_code == 200
            assert client.get(f"{url}/idle").status_code == 200
        instrument.shutdown()
    found = stacks(db_path, "/spin/{n}")
    assert sum(found.values()) >= 50
    assert share_with(found, "test_profiler:busy_part") > 0.5
    assert all("busy_part" not in s for s in stacks(db_path, "/idle"))


def test_fastapi_def_endpoints_are_sampled_in_their_worker_thread(db_path: Path) -> None:
    """uvicorn: a plain ``def`` endpoint runs in anyio's worker thread, with no middleware
    frame on its stack; the thread's copy of the request's context names its route. An idle
    worker thread (waiting for its next job, the last job's context still in its frame) is
    not attributed: the async route that follows is never charged with slow_part."""
    instrument.configure(metrics_db=str(db_path), flush_interval=0.2, profiler=True,
                         profiler_hz=200)
    app = FastAPI()

    @app.get("/work/{n}")
    def work(n: int) -> dict[str, int]:
        slow_part()
        return {"n": n}

    @app.get("/spin")
    async def spin() -> dict[str, int]:
        return {"n": busy_part(0.01)}

    instrument_app(app)
    with uvicorn_server(app) as url, httpx.Client() as client:
        for i in range(30):
            assert client.get(f"{url}/work/{i}").status_code == 200
            assert client.get(f"{url}/spin").status_code == 200
        seen = instrument.stats()["profiler"]
        instrument.shutdown()
    assert seen["errors"] == 0, seen  # the reader never tripped on a worker's frame
    found = stacks(db_path, "/work/{n}")
    assert sum(found.values()) >= 50, found
    assert share_with(found, "test_profiler:slow_part") > 0.5, found
    spun = stacks(db_path, "/spin")
    assert sum(spun.values()) > 0 and all("slow_part" not in s for s in spun), spun
    assert all(route in ("/work/{n}", "/spin") for (route,) in
               query(db_path, "SELECT DISTINCT route FROM profile_stacks")), "stray routes"


def test_the_api_serves_collapsed_stacks(db_path: Path) -> None:
    """GET profile: text flamegraph.pl reads, JSON for the page, 400 and 401 as elsewhere."""
    instrument.configure(metrics_db=str(db_path), flush_interval=0.2, profiler=True,
                         profiler_hz=200)
    app = work_app()
    with werkzeug_server(app) as url, requests.Session() as s:
        for _ in range(40):
            s.get(url + "/work", timeout=10)
    instrument.shutdown()
    with running_server(db_path) as (srv, _):
        root = srv.url[: -len("/monitoring")] + "/api/v1/monitoring/profile"
        text = requests.get(root, params={"route": "/work"}, headers=AUTH, timeout=10)
        assert text.status_code == 200 and text.headers["Content-Type"].startswith("text/plain")
        lines = text.text.splitlines()
        assert lines and all(line.rsplit(" ", 1)[1].isdigit() for line in lines)
        data = requests.get(root, params={"route": "/work", "format": "json"}, headers=AUTH,
                            timeout=10).json()
        assert data["available"] is True
        assert data["total"] == sum(int(line.rsplit(" ", 1)[1]) for line in lines)
        assert requests.get(root, params={"format": "svg"}, headers=AUTH,
                            timeout=10).status_code == 400
        assert requests.get(root, timeout=10).status_code == 401
        page = requests.get(srv.url[: -len("/monitoring")] + "/api/v1/monitoring/routes/%2Fwork",
                            headers=AUTH, timeout=10).json()
        assert page["profile"]["available"] is True and page["profile"]["samples"] > 0


def test_a_django_stream_is_attributed_through_its_body_counter(db_path: Path) -> None:
    """Django under a threaded WSGI server: a streamed body's generator runs after the
    middleware returned, inside the kit's counting generator, and is attributed there."""
    from django.core.wsgi import get_wsgi_application

    from tests import django_env  # noqa: F401 - django.setup() with the test project

    instrument.configure(metrics_db=str(db_path), flush_interval=0.2, profiler=True,
                         profiler_hz=200)
    with werkzeug_server(get_wsgi_application()) as url, requests.Session() as s:
        for _ in range(6):
            assert s.get(url + "/blog/stream/4/?pause=0.03", timeout=10).text.count("chunk") == 4
            assert s.get(url + "/articles/2024/", timeout=10).status_code == 200
    instrument.shutdown()
    found = stacks(db_path, "/blog/stream/<int:n>/")
    assert sum(found.values()) >= 20
    assert share_with(found, "blog.views:stream.<locals>.chunks") > 0.5
    assert all("chunks" not in s for s in stacks(db_path, "/articles/<int:year>/"))


def test_django_sync_views_under_asgi_are_attributed_through_their_worker_context(
        db_path: Path) -> None:
    """Django under uvicorn: a sync view runs in asgiref's worker threads, with no middleware
    frame on their stacks (the kit's middleware runs async, on the loop); their copy of the
    request's context names the request."""
    from django.core.asgi import get_asgi_application

    from tests import django_env  # noqa: F401 - django.setup() with the test project

    instrument.configure(metrics_db=str(db_path), flush_interval=0.2, profiler=True,
                         profiler_hz=200)
    with uvicorn_server(get_asgi_application(), lifespan="off") as url, httpx.Client() as c:
        for _ in range(10):
            assert c.get(url + "/legacy/abc/?pause=0.03").text == "legacy abc"
            assert c.get(url + "/articles/2024/").status_code == 200
        seen = instrument.stats()["profiler"]
        instrument.shutdown()
    assert seen["errors"] == 0, seen
    found = stacks(db_path, "/legacy/(?P<slug>[a-z]+)/$")
    assert sum(found.values()) >= 30, found
    assert share_with(found, "blog.views:legacy") > 0.5, found
    assert all("legacy" not in s for s in stacks(db_path, "/articles/<int:year>/"))


def test_idle_threads_are_counted_not_attributed(db_path: Path) -> None:
    """Threads outside any request are dropped and counted; a flush hands the counts over
    without waiting for the profiler's next second."""
    instrument.configure(metrics_db=str(db_path), flush_interval=60.0, profiler=True,
                         profiler_hz=100)
    idle = threading.Event()
    sleepers = [threading.Thread(target=idle.wait, name=f"idle-{i}") for i in range(3)]
    for t in sleepers:
        t.start()
    try:
        assert runtime.profiler is not None
        wait_until(lambda: runtime.profiler.stats()["unattributed"] >= 60, timeout=10)
    finally:
        idle.set()
        for t in sleepers:
            t.join()
    stats = instrument.stats()["profiler"]
    assert stats["on"] is True and stats["hz"] == 100 and stats["samples"] == 0
    assert stats["errors"] == 0
    app = work_app()
    with werkzeug_server(app) as url, requests.Session() as s:
        for _ in range(10):
            s.get(url + "/work", timeout=10)
        assert instrument.flush()  # hands over what was counted since the last second
        counted = instrument.stats()["profiler"]["samples"]
        assert counted > 0 and sum(stacks(db_path, "/work").values()) == counted


def test_off_by_default_no_thread(db_path: Path) -> None:
    """Without INSTRUMENT_PROFILER no profiler thread runs."""
    instrument.configure(metrics_db=str(db_path))
    assert runtime.profiler is None
    assert not any(t.name == "instrument-profiler" for t in threading.enumerate())
    assert instrument.stats()["profiler"] == {"on": False, "hz": 50}


@pytest.mark.parametrize("raw", ["0", "abc", "5000"])
def test_a_bad_rate_fails_naming_the_variable(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """INSTRUMENT_PROFILER_HZ outside 1..1000 stops start-up with the variable and value."""
    monkeypatch.setenv("INSTRUMENT_PROFILER_HZ", raw)
    with pytest.raises(ValueError, match=f"INSTRUMENT_PROFILER_HZ.*{raw}"):
        instrument.configure()


def test_postgresql_stores_and_reads_the_same_stacks_as_sqlite(tmp_path: Path) -> None:
    """Both stores get the same batches: PostgreSQL's rows carry host and pid, and the
    profile query (rewritten for PostgreSQL) adds them up as SQLite's does."""
    from instrument.backends.postgresql import PostgreSQLBackend
    from instrument.backends.sqlite import SQLiteBackend
    from instrument.storage.pg_read import PgQueryConnection
    from instrument.storage.profile_query import profile_stacks
    from tests.pg_cluster import pg_cluster

    app = work_app()
    sqlite_file = tmp_path / "same.db"
    with pg_cluster() as pg:
        url = pg.new_schema()
        instrument.configure(flush_interval=60, profiler=True, profiler_hz=200,
                             backends=[PostgreSQLBackend(url, instance="web-1"),
                                       SQLiteBackend(str(sqlite_file))])
        with werkzeug_server(app) as base, requests.Session() as s:
            for _ in range(20):
                s.get(base + "/work", timeout=10)
            assert instrument.flush()
        instrument.shutdown()
        reader = PgQueryConnection.open(url)
        try:
            from_pg = profile_stacks(reader, route="/work", method="GET")
            hosts = list(reader.execute("SELECT DISTINCT host, pid FROM profile_stacks"))
        finally:
            reader.close()
    conn = sqlite3.connect(sqlite_file)
    try:
        from_sqlite = profile_stacks(conn, route="/work", method="GET")
    finally:
        conn.close()
    assert from_pg == from_sqlite and sum(n for _, n in from_pg) >= 20
    assert share_with(Counter(dict(from_pg)), "test_profiler:slow_part") > 0.5
    assert hosts == [("web-1", os.getpid())]


def test_a_file_from_before_the_pid_column_gains_it(db_path: Path) -> None:
    """A store migrated up to the profiler's first table (version 8) gets ``pid`` added,
    its rows kept, and takes new rows."""
    from instrument.backends.sqlite import SQLiteBackend
    from instrument.storage.sqlite_schema import MIGRATIONS

    minute = int(time.time()) // 60 * 60  # recent: kept by retention
    conn = sqlite3.connect(db_path)
    for sql in MIGRATIONS[:8]:
        conn.executescript(sql)
    conn.execute("INSERT INTO profile_stacks (minute, route, method, stack, samples)"
                 " VALUES (?, '/old', 'GET', 'a:f', 3)", (minute,))
    conn.execute("PRAGMA user_version = 8")
    conn.commit()
    conn.close()
    instrument.configure(backends=[SQLiteBackend(str(db_path))], flush_interval=60)
    runtime.recorder.add(("profile", minute, "/new", "GET", "a:f;b:g", 2))
    assert instrument.flush()
    assert query(db_path, "SELECT route, samples, pid FROM profile_stacks ORDER BY id") == [
        ("/old", 3, None), ("/new", 2, os.getpid())]


def test_a_forked_child_samples_with_its_own_thread(db_path: Path) -> None:
    """After a fork (a preloading server's worker) the child starts its own profiler
    with the flusher, with no counts inherited from the parent."""
    instrument.configure(metrics_db=str(db_path), flush_interval=0.2, profiler=True)
    parent = runtime.profiler
    assert parent is not None and parent.alive
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        ok = False
        try:
            child = runtime.profiler
            ok = (child is not None and child is not parent and child.samples == 0
                  and wait_until(lambda: child.alive and child.unattributed > 0, timeout=5))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent.alive
