"""The route-aware sampling profiler under real servers: werkzeug (threads) and uvicorn (async)."""

from __future__ import annotations

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
from tests.servers import in_threads, query, uvicorn_server, werkzeug_server

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def stacks(db: Path, route: str) -> Counter[str]:
    return Counter(dict(query(db, "SELECT stack, sum(samples) FROM profile_stacks"
                                  " WHERE route = ? GROUP BY stack", route)))


def share_with(found: Counter[str], name: str) -> float:
    total = sum(found.values())
    return sum(n for s, n in found.items() if name in s) / total if total else 0.0


def slow_part() -> None:
    time.sleep(0.03)  # a sampled thread is seen waiting here: wall-clock, as a user wants


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


def test_the_api_serves_collapsed_stacks(db_path: Path) -> None:
    """GET profile: text flamegraph.pl reads, JSON for the page, 400 and 401 as elsewhere."""
    instrument.configure(metrics_db=str(db_path), flush_interval=0.2, profiler=True,
                         profiler_hz=200)
    app = Flask(__name__)

    @app.get("/work")
    def work() -> str:
        slow_part()
        return "done"

    Instrument(app)
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


def test_off_by_default_no_thread(db_path: Path) -> None:
    """Without INSTRUMENT_PROFILER no profiler thread runs."""
    instrument.configure(metrics_db=str(db_path))
    assert runtime.profiler is None
    assert not any(t.name == "instrument-profiler" for t in threading.enumerate())


@pytest.mark.parametrize("raw", ["0", "abc", "5000"])
def test_a_bad_rate_fails_naming_the_variable(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """INSTRUMENT_PROFILER_HZ outside 1..1000 stops start-up with the variable and value."""
    monkeypatch.setenv("INSTRUMENT_PROFILER_HZ", raw)
    with pytest.raises(ValueError, match=f"INSTRUMENT_PROFILER_HZ.*{raw}"):
        instrument.configure()
