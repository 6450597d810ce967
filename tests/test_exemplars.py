"""Exemplar requests: the slowest and failing requests of each route and minute, exactly.

Real servers (werkzeug for Flask, uvicorn for FastAPI), real SQLite files and a
real PostgreSQL cluster; the stored exemplars are checked against the raw rows of
``api_metrics`` that the same requests produced.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import requests
from fastapi import FastAPI
from flask import Flask

import instrument
from instrument.backends.postgresql import PostgreSQLBackend
from instrument.core import exemplars
from instrument.core.aggregate import Aggregator
from instrument.core.batch import EXEMPLAR_WIDTH, Batch
from instrument.core.exemplars import Picker
from instrument.fastapi import instrument_app
from instrument.flask import Instrument
from tests.pg_cluster import pg_cluster
from tests.servers import query, uvicorn_server, werkzeug_server

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
COLUMNS = ("timestamp, minute, request_id, trace_id, method, route, path, query, status_code,"
           " duration_ms, ttfb_ms, request_bytes, response_bytes, client, user_agent, exception,"
           " reason, pid")


def stored(db: Path, where: str = "1", *params: Any) -> list[dict[str, Any]]:
    names = [c.strip() for c in COLUMNS.split(",")]
    rows = query(db, f"SELECT {COLUMNS} FROM request_exemplars WHERE {where}", *params)
    return [dict(zip(names, r, strict=True)) for r in rows]


def _minute(iso: str) -> int:
    return int(time.mktime(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone) // 60 * 60


# -- the flusher's choice ---------------------------------------------------------------
def _offer(p: Picker, ms: float, *, minute: int = 600, route: str = "/r", status: int = 200,
           exc: str | None = None, rid: str = "r", query: str | None = None) -> Any:
    detail = (False, rid, "/r/1", query, ("10.0.0.1", 5000), b"agent", None)
    return p.offer(minute, route, route, "GET", status, ms, ms / 2, 3, 4, exc,
                   "1970-01-01T00:10:00.000000", detail, 42)


def test_the_picker_keeps_exactly_the_slowest_of_a_minute() -> None:
    p = Picker(keep=5)
    durations = random.Random(3).sample(range(1, 10_000), 500)
    for i, ms in enumerate(durations):
        assert _offer(p, float(ms), rid=f"r{i}") is None  # slow ones wait for the minute to end
    rows = p.take(final=True)
    got = [rows[i + 9] for i in range(0, len(rows), EXEMPLAR_WIDTH)]
    assert got == sorted(durations, reverse=True)[:5]
    assert p.take(final=True) == []  # handed over once, not again


def test_a_flush_hands_over_the_current_minute_and_the_rest_follows_once() -> None:
    p = Picker(keep=2)
    for ms in (5.0, 6.0):
        _offer(p, ms)
    first = p.take(final=True)
    assert [first[9], first[9 + EXEMPLAR_WIDTH]] == [6.0, 5.0]
    _offer(p, 7.0)  # displaces 5.0, which is stored already and stays
    p._minute = 660  # a later minute was seen: 600 is over
    later = p.take()
    assert [later[i + 9] for i in range(0, len(later), EXEMPLAR_WIDTH)] == [7.0]


def test_failures_are_kept_at_once_up_to_the_cap_and_the_rest_counted() -> None:
    p = Picker(keep=5, failures=20)
    kept = [_offer(p, 1.0, status=500 if i % 2 else 200, exc=None if i % 2 else "KeyError")
            for i in range(25)]
    assert sum(r is not None for r in kept) == 20 and p.skipped == 5
    row = next(r for r in kept if r is not None)
    assert row[16] == "error" and row[13] == "10.0.0.1" and row[14] == "agent"


def test_the_query_string_is_redacted() -> None:
    p = Picker()
    row = _offer(p, 1.0, status=503, query="user=7&api_key=abc123&token=t0k")
    assert row[7] == "user=7&api_key=[REDACTED]&token=[REDACTED]"


def test_the_cut_published_is_the_fastest_of_the_slowest() -> None:
    p = Picker(keep=3)
    for ms in (1.0, 9.0, 4.0, 7.0):
        _offer(p, ms)
    p.publish(offset=0.0)
    assert exemplars.CUTS["/r"] == pytest.approx(0.004)  # seconds: a request at <= 4 ms
    assert exemplars.UNTIL[0] == pytest.approx(600 + 59.5)


def test_the_aggregator_unwraps_candidates_for_the_raw_rows() -> None:
    agg = Aggregator(picker=Picker(keep=1))
    t = time.perf_counter()
    detail = (True, "rid-1", "/a/1", b"x=1", ("1.2.3.4", 1), None, b"")
    batch = agg.aggregate([("http", t, t + 0.01, t + 0.005, "/a/{id}", "GET", 502, 0, 0, None,
                            detail)])
    [row] = batch.requests
    assert row[10] == 1  # client_disconnected from the detail's first field
    assert batch.exemplar_values[2] == "rid-1" and batch.exemplar_values[7] == "x=1"


# -- real apps ---------------------------------------------------------------------------
def _check_against_raw_rows(db: Path, route: str, keep: int) -> int:
    """Each minute's stored slow exemplars of ``route`` are its ``keep`` slowest successes."""
    raw: dict[int, list[float]] = defaultdict(list)
    for ts, ms in query(db, "SELECT timestamp, response_time_ms FROM api_metrics"
                            " WHERE endpoint = ? AND status_code < 500", route):
        raw[_minute(ts)].append(ms)
    got: dict[int, list[float]] = defaultdict(list)
    for r in stored(db, "route = ? AND reason = 'slow'", route):
        got[r["minute"]].append(r["duration_ms"])
    assert raw and set(got) == set(raw)
    for minute, values in raw.items():
        assert sorted(got[minute], reverse=True) == sorted(values, reverse=True)[:keep]
    return sum(len(v) for v in got.values())


def test_flask_keeps_the_slowest_and_every_failure(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    instrument.configure(metrics_db=str(db), flush_interval=0.2)
    app = Flask("exemplars")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, Any]:
        time.sleep(item_id / 10_000)
        return {"id": item_id}

    @app.get("/fail/<int:n>")
    def fail(n: int) -> str:
        raise RuntimeError(f"bug {n}")

    Instrument(app)
    ids = random.Random(5).sample(range(200), 120)
    with werkzeug_server(app) as url, ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: requests.get(f"{url}/items/{i}?q={i}&password=hunter2",
                                             headers={"User-Agent": f"ua-{i}"}, timeout=30), ids))
        list(pool.map(lambda i: requests.get(f"{url}/fail/{i}", timeout=30), range(6)))
        time.sleep(0.3)  # the last bodies are closed after the client has read them
        assert instrument.flush(10.0)
    assert _check_against_raw_rows(db, "/items/<int:item_id>", 5) >= 5
    slow = stored(db, "reason = 'slow'")
    for r in slow:
        item_id = int(r["path"].rsplit("/", 1)[1])
        assert r["query"] == f"q={item_id}&password=[REDACTED]"
        assert r["user_agent"] == f"ua-{item_id}" and r["client"] == "127.0.0.1"
        assert r["method"] == "GET" and r["status_code"] == 200 and r["request_id"]
        assert r["ttfb_ms"] <= r["duration_ms"] and r["response_bytes"] > 0
    failed = stored(db, "reason = 'error'")
    assert sorted(r["path"] for r in failed) == sorted(f"/fail/{i}" for i in range(6))
    assert {(r["route"], r["status_code"], r["exception"]) for r in failed} == {
        ("/fail/<int:n>", 500, "RuntimeError")}


def test_fastapi_exemplars_carry_the_trace_and_request_id(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    instrument.configure(metrics_db=str(db), flush_interval=0.2)
    api = FastAPI()

    @api.get("/slow/{ms}")
    async def slow(ms: int) -> dict[str, int]:
        import asyncio
        await asyncio.sleep(ms / 1000)
        return {"ms": ms}

    @api.get("/boom")
    async def boom() -> None:
        raise KeyError("nope")

    instrument_app(api)
    with uvicorn_server(api) as url, httpx.Client(base_url=url, timeout=30) as client:
        for ms in (1, 2, 3, 4, 5, 6, 7, 30):
            client.get(f"/slow/{ms}", params={"secret": "s", "n": ms})
        # the handler's exception passes through the middleware; uvicorn answers 500
        r = client.get("/boom", headers={"traceparent": CALLER, "X-Request-ID": "boom-1"})
        assert r.status_code == 500
        assert instrument.flush(10.0)
    _check_against_raw_rows(db, "/slow/{ms}", 5)
    top = max(stored(db, "reason = 'slow'"), key=lambda x: x["duration_ms"])
    assert top["path"] == "/slow/30" and top["query"] == "secret=[REDACTED]&n=30"
    [failed] = stored(db, "reason = 'error'")
    assert failed["request_id"] == "boom-1" and failed["trace_id"] == CALLER[3:35]
    assert failed["exception"] == "KeyError" and failed["route"] == "/boom"


def test_exemplars_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSTRUMENT_EXEMPLARS", "0")
    db = tmp_path / "m.db"
    instrument.configure(metrics_db=str(db), flush_interval=0.2)
    app = Flask("off")
    app.get("/x")(lambda: "x")
    Instrument(app)
    with werkzeug_server(app) as url:
        for _ in range(10):
            requests.get(url + "/x", timeout=10)
        time.sleep(0.3)
        assert instrument.flush(10.0)
    assert query(db, "SELECT count(*) FROM api_metrics")[0][0] == 10
    assert query(db, "SELECT count(*) FROM request_exemplars")[0][0] == 0


def test_retention_removes_old_exemplars(tmp_path: Path) -> None:
    from instrument.backends.sqlite import SQLiteBackend
    backend = SQLiteBackend(str(tmp_path / "m.db"), retention_days=1)
    old, new = Picker(failures=5), Picker(failures=5)
    rows = [*_offer(old, 1.0, status=500, minute=60), *_offer(new, 1.0, status=500,
                                                                minute=int(time.time()) // 60 * 60)]
    backend.write(Batch(exemplar_values=rows))  # the first write sweeps, as every 10 minutes
    backend.apply_retention()
    assert [r[0] for r in sqlite3.connect(tmp_path / "m.db").execute(
        "SELECT minute FROM request_exemplars")] == [int(time.time()) // 60 * 60]
    backend.close()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[Any]:
    with pg_cluster() as cluster:
        yield cluster


def test_postgresql_stores_exemplars_with_their_host(pg_url: Any) -> None:
    url = pg_url.new_schema()
    backend = PostgreSQLBackend(url)
    p = Picker(failures=5)
    now = int(time.time()) // 60 * 60  # an older minute would be swept by the first write
    backend.write(Batch(exemplar_values=[*_offer(p, 12.5, status=500, exc="ValueError",
                                                 rid="pg-1", query="token=x", minute=now)]))
    backend.close()
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT request_id, query, exception, duration_ms, client, host"
                           " FROM request_exemplars").fetchone()
    assert row is not None and row[:5] == ("pg-1", "token=[REDACTED]", "ValueError", 12.5,
                                           "10.0.0.1")
    assert row[5]


# -- the API -----------------------------------------------------------------------------
def test_the_api_lists_filters_and_opens_exemplars(tmp_path: Path) -> None:
    """A real app stores exemplars and logs; the standalone dashboard's API finds them."""
    import logging

    from instrument.logs import setup_logging
    from tests.dashboard_fixtures import TOKEN, running_server

    db = tmp_path / "m.db"
    instrument.configure(metrics_db=str(db), flush_interval=0.2)
    setup_logging(logger="exemplar-api", stream=open(os.devnull, "w"))  # noqa: SIM115
    log = logging.getLogger("exemplar-api")
    app = Flask("api")

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> str:
        log.info("looking up order %d", order_id)
        time.sleep(order_id * 3 / 1000)
        if order_id == 13:
            return "unlucky", 503
        return "ok"

    Instrument(app)
    with werkzeug_server(app) as url:
        for i in (1, 2, 3, 4, 5, 6, 7, 13, 20):
            requests.get(f"{url}/orders/{i}", headers={"X-Request-ID": f"order-{i}"},
                         timeout=10)
        time.sleep(0.3)
        assert instrument.flush(10.0)
    with running_server(db) as (srv, _):
        api = srv.url[: -len("/monitoring")] + "/api/v1/monitoring"
        auth = {"Authorization": f"Bearer {TOKEN}"}

        def get(path: str, **params: Any) -> requests.Response:
            return requests.get(api + path, params=params, headers=auth, timeout=10)

        slowest = get("/requests", route="/orders/<int:order_id>", order="slowest").json()
        ids = [r["request_id"] for r in slowest["requests"]]
        durations = [r["duration_ms"] for r in slowest["requests"]]
        assert ids[:2] == ["order-20", "order-13"] and len(ids) == 6  # 5 slow and 1 failing
        assert durations == sorted(durations, reverse=True)
        assert [r["request_id"] for r in get("/requests", status="5xx").json()["requests"]] == [
            "order-13"]
        assert get("/requests", status="503").json()["requests"][0]["reason"] == "error"
        fast = get("/requests", min_ms="50", order="slowest").json()["requests"]
        assert [r["request_id"] for r in fast] == ["order-20"]
        one = get("/requests/order-20").json()
        assert one["request"]["path"] == "/orders/20" and one["request"]["status_code"] == 200
        assert [x["message"] for x in one["logs"]] == ["looking up order 20"]
        assert get("/requests/order-1").status_code == 200  # not kept, but it logged
        assert get("/requests/nobody").status_code == 404
        for bad in ({"status": "abc"}, {"min_ms": "x"}, {"order": "fastest"}, {"limit": "0"},
                    {"from": "yesterday"}, {"reason": "odd"}):
            r = get("/requests", **bad)
            assert r.status_code == 400 and r.json()["message"]
        assert requests.get(api + "/requests", timeout=10).status_code == 401
        spec = get("/openapi.json").json()["paths"]
        assert "/requests" in spec and "/requests/{request_id}" in spec
