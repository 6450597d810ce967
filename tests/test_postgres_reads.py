"""Reading a fleet's PostgreSQL store: the dashboard, the alert manager and log search.

A throwaway cluster (tests/pg_cluster.py) runs for the module; each test uses
its own schema. The dashboard over PostgreSQL must answer exactly what the
dashboard over an equivalent SQLite file answers, so the first test has the kit
write every batch to both and compares every endpoint's JSON.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

import instrument
from instrument import logsearch
from instrument.alerting import AlertManager, AlertRule, AlertSeverity, Threshold
from instrument.backends.postgresql import PostgreSQLBackend
from instrument.backends.sqlite import SQLiteBackend
from instrument.core.aggregate import Aggregator
from instrument.core.runtime import runtime
from instrument.dashboard import Dashboard, for_settings
from instrument.logs import StoreHandler
from instrument.metrics_collector import get_metrics_collector
from instrument.storage.pg_logsearch import _DOCUMENT
from instrument.wsgi import InstrumentMiddleware
from tests.dashboard_fixtures import (
    TOKEN,
    assert_two_periods,
    fire_alert,
    running_server,
    two_period_samples,
)
from tests.pg_cluster import PgCluster, pg_cluster
from tests.servers import wait_until, werkzeug_server

API = "/api/v1/monitoring/"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OFFSET = time.time() - time.perf_counter()  # the Aggregator's wall-clock mapping


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    with pg_cluster() as cluster:
        yield cluster


def _shop(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ["PATH_INFO"]
    log = logging.getLogger("shop.web")
    if path == "/boom":
        log.error("payment failed for order %s", environ.get("QUERY_STRING") or "7")
        start_response("500 Internal Server Error", [("Content-Length", "0")])
        return [b""]
    if path == "/missing":
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    if path == "/slow":
        time.sleep(0.02)
    log.info("served %s", path)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def _stored(path: Path) -> int:
    """Requests in the SQLite twin of the PostgreSQL store (0 before its first write)."""
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM api_metrics").fetchone()[0])


def _same(a: Any, b: Any, where: str = "") -> None:
    """Equal JSON, floats to 1e-9 relative (PostgreSQL and SQLite sum in their own order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        # Rates of open windows divide by "now" (queries' own clock), read a moment apart.
        rel = 1e-4 if where.endswith("rate_per_minute") else 1e-9
        assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-9), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _drop(body: Any, *keys: str) -> Any:
    """``body`` without the given keys at any depth (the PostgreSQL-only ``host``, clocks)."""
    if isinstance(body, dict):
        return {k: _drop(v, *keys) for k, v in body.items() if k not in keys}
    if isinstance(body, list):
        return [_drop(v, *keys) for v in body]
    return body


def test_every_dashboard_endpoint_answers_from_postgresql_as_from_sqlite(
        pg: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kit storing in PostgreSQL serves a dashboard whose every answer equals SQLite's."""
    url = pg.new_schema()
    sqlite_file = tmp_path / "same.db"
    alerts = tmp_path / "alerts.db"
    fire_alert(alerts)
    monkeypatch.setenv("INSTRUMENT_ALERTS_DB", str(alerts))
    instrument.configure(storage=url, instance="web-1", dashboard_token=TOKEN,
                         flush_interval=60,  # one explicit flush: both stores get equal batches
                         backends=[PostgreSQLBackend(url, instance="web-1"),
                                   SQLiteBackend(str(sqlite_file))])
    shop = logging.getLogger("shop")
    handler = StoreHandler()
    shop.addHandler(handler)
    shop.setLevel(logging.INFO)
    now = time.time()
    try:
        with werkzeug_server(InstrumentMiddleware(_shop)) as base, requests.Session() as s:
            for i in range(40):
                path = ("/items", "/slow", "/missing", "/boom")[i % 4] if i % 3 else "/items"
                s.get(f"{base}{path}", params={"n": i}, timeout=10)
            for i in range(12):  # system readings over the last hour, as the collector adds them
                runtime.recorder.add(("system", now - 3000 + i * 240, {
                    "cpu_percent": 10.0 + i, "memory_percent": 40.0 + i % 3,
                    "memory_used_mb": 900.0, "memory_available_mb": 3100.0,
                    "disk_usage_percent": 55.0, "disk_free_gb": 20.0,
                    "network_bytes_sent": 1_000_000 + 5_000 * i,
                    "network_bytes_recv": 2_000_000 + 9_000 * i, "active_connections": 3 + i % 2,
                    "pid": 77}))
            # The server records a request when it closes the response, which may come just
            # after the client has read the body: wait for the last one to end, then flush.
            wait_until(lambda: runtime.recorder.in_flight == 0, timeout=10)
            assert wait_until(lambda: instrument.flush(20.0) and _stored(sqlite_file) == 40,
                              timeout=20)
            # The app's own in-process dashboard reads PostgreSQL (INSTRUMENT_STORAGE).
            mounted = for_settings(runtime.settings)  # the one the middleware serves
            assert mounted.api.db.path == url
            assert "s3cret" not in repr(Dashboard("postgresql://app:s3cret@db:5432/metrics"))
            with running_server(sqlite_file, alerts_db=alerts) as (srv, lite):
                pinned = time.time() + 1
                lite.api.clock = mounted.api.clock = lambda: pinned
                checked = _compare_endpoints(s, srv.url[: -len("/monitoring")], base)
    finally:
        shop.removeHandler(handler)
    assert checked == 15


def _compare_endpoints(s: requests.Session, lite: str, pg: str) -> int:
    """GET every endpoint from both dashboards and compare; returns how many were compared."""
    endpoints = [
        ("metrics/summary", {"hours": 1}), ("metrics/summary", {"hours": 24, "kind": "call"}),
        ("metrics/timeseries", {"metric": "requests,rate,errors,error_rate,client_errors,"
                                "latency_avg,latency_p50,latency_p95,latency_p99,latency_max,"
                                "ttfb_avg,bytes_in,bytes_out", "hours": 1}),
        ("metrics/timeseries", {"metric": "latency_p95", "route": "/slow", "method": "GET",
                                "hours": 2, "step": 600}),
        ("metrics/system", {"hours": 1}), ("metrics/system", {"hours": 24}),
        ("routes", {}), ("routes", {"sort": "p95", "limit": 2}),
        ("alerts", {}), ("logs", {}), ("logs", {"q": "payment", "level": "ERROR"}),
        ("logs", {"logger": "shop", "limit": 5}), ("openapi.json", {}),
    ]
    n = 0
    for sub, params in endpoints:
        a = s.get(lite + API + sub, params=params, headers=AUTH, timeout=10)
        b = s.get(pg + API + sub, params=params, headers=AUTH, timeout=10)
        assert (a.status_code, b.status_code) == (200, 200), (sub, b.text[:300])
        # host: PostgreSQL rows name their machine; created_at: each store's insert clock.
        _same(_drop(a.json(), "created_at"), _drop(b.json(), "host", "created_at"), sub)
        if (sub, params) == ("metrics/summary", {"hours": 1}):  # not a comparison of empties
            assert b.json()["requests"]["requests"] == 40
        if (sub, params) == ("metrics/system", {"hours": 1}):
            assert sum(b.json()["series"]["readings"]) == 12
        n += 1
    body = s.get(pg + API + "logs", params={"q": "payment"}, headers=AUTH, timeout=10).json()
    booms = sum(1 for i in range(40) if i % 3 and i % 4 == 3)
    assert {r["host"] for r in body["logs"]} == {"web-1"} and len(body["logs"]) == booms
    health = [s.get(x + API + "health", headers=AUTH, timeout=10) for x in (lite, pg)]
    assert health[1].status_code == 200
    _same(health[0].json()["checks"]["store"], health[1].json()["checks"]["store"], "health")
    n += 1
    bad = s.get(pg + API + "logs", params={"q": '"unclosed'}, headers=AUTH, timeout=10)
    assert bad.status_code == 400 and "unterminated" in bad.json()["message"]
    alert_id = s.get(pg + API + "alerts", headers=AUTH, timeout=10).json()["active"][0]["id"]
    ack = s.post(pg + API + f"alerts/{alert_id}/acknowledge", json={"by": "oncall"},
                 headers=AUTH, timeout=10)
    assert ack.status_code == 200 and ack.json()["alert"]["acknowledged_by"] == "oncall"
    return n + 1


def _errors(url: str, host: str, n: int) -> None:
    """``host`` stores ``n`` failed requests from just now."""
    backend = PostgreSQLBackend(url, instance=host)
    t0 = time.perf_counter()
    try:
        backend.write(Aggregator().aggregate(
            [("http", t0, t0 + 0.01, 0.0, "/pay", "POST", 500, 10, 20, None, False)] * n))
    finally:
        backend.close()


def test_an_alert_fires_from_the_fleets_requests_in_postgresql(
        pg: PgCluster, tmp_path: Path) -> None:
    """One alert manager reads every host's requests from PostgreSQL: 6 + 6 errors reach 10."""
    url = pg.new_schema()
    instrument.configure(storage=url, instance="alerter", flush_interval=60)
    manager = AlertManager(db_path=str(tmp_path / "alerts.db"), default_rules=False, environ={})
    try:
        manager.add_rule(AlertRule("fleet_errors", "5xx across the fleet", AlertSeverity.HIGH,
                                   Threshold("api.error_count", ">=", 10)))
        _errors(url, "web-a", 6)
        manager.evaluate()
        assert manager.active_alerts == {} and manager.health()["evaluation_errors"] == 0
        _errors(url, "web-b", 6)
        manager.evaluate()
        alert = manager.active_alerts["fleet_errors"]
        assert alert.metadata["value"] == 12
        # A dropped connection is replaced at the next evaluation.
        get_metrics_collector()._conn[1].conn.close()  # type: ignore[index]
        _errors(url, "web-a", 1)
        manager.evaluate()
        assert manager.active_alerts["fleet_errors"].metadata["value"] == 13
        assert manager.health()["evaluation_errors"] == 0
    finally:
        manager.close()
    # Nothing came from a local file: the kit never wrote one.
    assert not Path(runtime.settings.metrics_db).exists()  # type: ignore[union-attr]


# (seconds after BASE, levelno, logger, message, exception, request id)
LINES = [
    (0, 20, "app", "user-42 signed in", None, "req-1"),
    (30, 20, "app.db", "query took 3 ms", None, "req-1"),
    (60, 30, "app.db", "connection reset by peer, retrying", None, "req-2"),
    (90, 40, "app.pay", "payment failed for order 7", None, "req-2"),
    (120, 20, "apple", "payment page viewed", None, "req-3"),
    (150, 30, "app.pay", "refund issued for order 7", None, "req-3"),
    (180, 40, "app.pay", "card payment declined", None, "req-4"),
    (210, 50, "app.web.x", "handler crashed", "Traceback\nZeroDivisionError: division by zero",
     "req-4"),
    (240, 20, "worker", "timeouts are rising", None, None),
    (270, 30, "worker", "timeout waiting for queue", None, None),
]
NAMES = {20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}
BASE = int(time.time() // 60) * 60 - 900


def _log_samples(lines: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [("log", BASE + dt, lv, NAMES[lv], logger, msg, exc, None, rid, "/r", "GET")
            for dt, lv, logger, msg, exc, rid in lines]


def test_log_search_on_postgresql_returns_exactly_the_matching_lines(
        pg: PgCluster, tmp_path: Path) -> None:
    """Text, level, logger, request id and time filters give SQLite's lines, newest first."""
    url = pg.new_schema()
    lite = str(tmp_path / "logs.db")
    backend = SQLiteBackend(lite)
    backend.write(Aggregator().aggregate(_log_samples(LINES)))
    backend.close()
    for host, part in (("web-a", LINES[:5]), ("web-b", LINES[5:])):  # two machines, one table
        writer = PostgreSQLBackend(url, instance=host)
        writer.write(Aggregator().aggregate(_log_samples(part)))
        writer.close()
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"text": "payment"}, ["card payment declined", "payment page viewed",
                               "payment failed for order 7"]),
        ({"text": '"order 7"'}, ["refund issued for order 7", "payment failed for order 7"]),
        ({"text": "timeout*"}, ["timeout waiting for queue", "timeouts are rising"]),
        ({"text": "payment NOT card"}, ["payment page viewed", "payment failed for order 7"]),
        ({"text": "refund OR declined"}, ["card payment declined", "refund issued for order 7"]),
        ({"text": '"user-42"'}, ["user-42 signed in"]),
        ({"text": "ZeroDivisionError"}, ["handler crashed"]),  # the exception text is indexed
        ({"level": "ERROR"}, ["handler crashed", "card payment declined",
                              "payment failed for order 7"]),
        ({"logger": "app"}, ["handler crashed", "card payment declined",
                             "refund issued for order 7", "payment failed for order 7",
                             "connection reset by peer, retrying", "query took 3 ms",
                             "user-42 signed in"]),
        ({"request_id": "req-2"}, ["payment failed for order 7",
                                   "connection reset by peer, retrying"]),
        ({"since": BASE + 60, "until": BASE + 150}, [
            "payment page viewed", "payment failed for order 7",
            "connection reset by peer, retrying"]),
        ({"text": "payment", "level": "WARNING", "logger": "app", "since": BASE + 100},
         ["card payment declined"]),
        ({"level": 30, "limit": 2}, ["timeout waiting for queue", "handler crashed"]),
    ]
    for filters, expected in cases:
        on_pg = logsearch.search_logs(url, **filters)
        assert [r["message"] for r in on_pg] == expected, filters
        assert [r["message"] for r in logsearch.search_logs(lite, **filters)] == expected, filters
    rows = logsearch.search_logs(url, text="payment")
    assert [r["host"] for r in rows] == ["web-b", "web-a", "web-a"]
    page = logsearch.search_logs(url, level="WARNING", before_id=rows[0]["id"], limit=3)
    assert [r["message"] for r in page] == ["refund issued for order 7",
                                            "payment failed for order 7",
                                            "connection reset by peer, retrying"]
    assert [r["message"] for r in logsearch.request_logs(url, "req-4")] == [
        "card payment declined", "handler crashed"]
    for bad in ('"unclosed', "payment AND", "(payment", "NEAR(a b)"):
        with pytest.raises(logsearch.LogQueryError):
            logsearch.search_logs(url, text=bad)
    with psycopg.connect(url, autocommit=True) as conn:  # the search can use the GIN index
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            f"EXPLAIN SELECT id FROM logs WHERE {_DOCUMENT} @@"
            " phraseto_tsquery('simple'::regconfig, 'payment')"))
    assert "idx_logs_fts" in plan


def test_system_series_add_up_hosts_without_mixing_their_counters(
        pg: PgCluster, tmp_path: Path) -> None:
    """Two machines' readings: CPU averaged, network rates each host's delta, summed."""
    url = pg.new_schema()
    slot = int(time.time() // 3600) * 3600 - 3600  # a whole past hour
    for host, cpu, sent0 in (("web-a", 10.0, 5_000_000_000), ("web-b", 30.0, 1_000)):
        samples = [("system", slot + 60 + 600 * i, {
            "cpu_percent": cpu, "network_bytes_sent": sent0 + 1_000 * 600 * i,
            "network_bytes_recv": 0, "pid": 1}) for i in range(5)]
        writer = PostgreSQLBackend(url, instance=host)
        writer.write(Aggregator().aggregate(samples))
        writer.close()
    with running_server(url) as (srv, dash):  # type: ignore[arg-type]
        dash.api.clock = lambda: slot + 3600
        r = requests.get(srv.url[: -len("/monitoring")] + API + "metrics/system",
                         params={"hours": 1, "step": 3600}, headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text
        series = r.json()["series"]
        assert series["readings"] == [10]
        assert series["cpu_percent"] == [pytest.approx(20.0)]
        assert series["network_sent_per_s"] == [pytest.approx(2 * 1_000.0)]
        stats = r.json()["stats"]
        assert stats["samples"] == 10 and stats["max_cpu_percent"] == 30.0
        # A row stored after the first answer shows up in the cached slot.
        writer = PostgreSQLBackend(url, instance="web-c")
        writer.write(Aggregator().aggregate([("system", slot + 120, {"cpu_percent": 80.0})]))
        writer.close()
        again = requests.get(srv.url[: -len("/monitoring")] + API + "metrics/system",
                             params={"hours": 1, "step": 3600}, headers=AUTH, timeout=10)
        assert again.json()["series"]["readings"] == [11]
        assert again.json()["series"]["cpu_percent"] == [pytest.approx(280.0 / 11)]


@pytest.mark.parametrize("previous", [True, False], ids=["two-hours", "no-previous-hour"])
def test_summary_compares_with_the_previous_period_on_postgresql(pg: PgCluster,
                                                                 previous: bool) -> None:
    """Over PostgreSQL the summary's 'previous' hour and 'change' are SQLite's exact numbers.

    The two hours are split over two hosts (one table), as a fleet writes them.
    """
    url = pg.new_schema()
    samples = two_period_samples(time.time(), previous=previous)
    for host, part in (("web-a", samples[::2]), ("web-b", samples[1::2])):
        writer = PostgreSQLBackend(url, instance=host)
        try:
            writer.write(Aggregator().aggregate(part))
        finally:
            writer.close()
    with running_server(url) as (srv, _):  # type: ignore[arg-type]
        r = requests.get(srv.url[: -len("/monitoring")] + API + "metrics/summary",
                         params={"hours": 1}, headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    assert_two_periods(r.json(), previous=previous)
