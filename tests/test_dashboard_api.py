"""The dashboard's REST API, served by the real standalone server over a populated SQLite file."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import instrument
from instrument.dashboard import Dashboard
from instrument.dashboard._health import DropWatch, in_process
from instrument.dashboard.server import DashboardServer
from instrument.testing import FailingBackend
from tests.dashboard_fixtures import (
    TOKEN,
    XSS_ROUTE,
    Populated,
    assert_two_periods,
    exact_percentile,
    fire_alert,
    populate,
    raw_requests,
    running_server,
    two_period_samples,
)
from tests.servers import wait_until

API = "/api/v1/monitoring/"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REL = 0.025  # a percentile read from the buckets is within 2.2 % of the exact one


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Populated:
    return populate(tmp_path_factory.mktemp("dash") / "metrics.db")


@pytest.fixture(scope="module")
def alerts_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("alerts") / "alerts.db"
    fire_alert(path)
    return path


@pytest.fixture(scope="module")
def server(data: Populated, alerts_db: Path) -> Iterator[DashboardServer]:
    with running_server(data.db, alerts_db=alerts_db) as (srv, _):
        yield srv


def base(server: DashboardServer) -> str:
    return server.url[: -len("/monitoring")]


def get(server: DashboardServer, path: str, **params: Any) -> requests.Response:
    return requests.get(base(server) + API + path, params=params, headers=AUTH, timeout=10)


def close(a: float | None, b: float, rel: float = REL) -> bool:
    return a is not None and abs(a - b) <= rel * abs(b) + 1e-9


# -- numbers against the raw rows ----------------------------------------------------------
def test_summary_matches_raw_rows(server: DashboardServer, data: Populated) -> None:
    """The last hour's totals, error rates, mean and percentiles equal the raw rows' values."""
    r = get(server, "metrics/summary", hours=1)
    assert r.status_code == 200
    body = r.json()
    lo = (int((body_now := data.now) - 3600) // 60) * 60
    rows = raw_requests(data.db, lo, body_now + 60)
    req = body["requests"]
    assert req["requests"] == len(rows) > 100
    assert req["errors"] == sum(1 for x in rows if x["status"] >= 500)
    assert req["client_errors"] == sum(1 for x in rows if 400 <= x["status"] < 500)
    assert abs(req["error_rate_percent"] - 100 * req["errors"] / len(rows)) < 1e-9
    assert abs(req["avg_ms"] - sum(x["ms"] for x in rows) / len(rows)) < 1e-6
    for q in (50, 95, 99):
        assert close(req[f"p{q}_ms"], exact_percentile([x["ms"] for x in rows], q))
    codes = {}
    for x in rows:
        codes[str(x["status"])] = codes.get(str(x["status"]), 0) + 1
    assert req["status_codes"] == codes
    assert body["status_classes"]["5xx"] == req["errors"]
    slowest = body["slowest_routes"][0]
    assert slowest["route"] == "/search"  # the 120 ms route
    assert body["failing_routes"][0]["route"] == "/boom"
    assert body["system"]["samples"] > 0


@pytest.mark.parametrize("previous", [True, False], ids=["two-hours", "no-previous-hour"])
def test_summary_compares_with_the_previous_period(tmp_path: Path, previous: bool) -> None:
    """hours=1 also reports the hour before ('previous') and each total's relative change.

    Two known hours are written through the kit's pipeline into a SQLite file; without
    requests in the earlier hour every change is null.
    """
    from instrument.backends.sqlite import SQLiteBackend
    from instrument.core.aggregate import Aggregator

    db = tmp_path / "two.db"
    backend = SQLiteBackend(str(db))
    try:
        backend.write(Aggregator().aggregate(two_period_samples(time.time(), previous=previous)))
    finally:
        backend.close()
    with running_server(db) as (srv, _):
        r = get(srv, "metrics/summary", hours=1)
    assert r.status_code == 200, r.text
    assert_two_periods(r.json(), previous=previous)


def test_timeseries_matches_raw_rows(server: DashboardServer, data: Populated) -> None:
    """Per 5-minute slot: request counts, rates, error rates and p95 equal the raw rows' values."""
    to = data.now
    r = get(server, "metrics/timeseries", metric="requests,rate,error_rate,latency_p95",
            step=300, **{"from": to - 3 * 3600, "to": to})
    assert r.status_code == 200
    body = r.json()
    assert body["step"] == 300 and body["from"] % 300 == 0
    assert len(body["timestamps"]) == len(body["series"]["requests"])
    checked = 0
    for i, t in enumerate(body["timestamps"]):
        rows = raw_requests(data.db, t, t + 300)
        assert body["series"]["requests"][i] == len(rows)
        assert body["series"]["rate"][i] == pytest.approx(len(rows) / 300)
        if rows:
            errors = sum(1 for x in rows if x["status"] >= 500)
            assert body["series"]["error_rate"][i] == pytest.approx(100 * errors / len(rows))
            expected = exact_percentile([x["ms"] for x in rows], 95)
            assert close(body["series"]["latency_p95"][i], expected), (t, expected)
            checked += 1
        else:
            assert body["series"]["latency_p95"][i] is None
    assert checked >= 30
    again = get(server, "metrics/timeseries", metric="latency_p95", step=300,
                **{"from": to - 3 * 3600, "to": to}).json()
    assert again["series"]["latency_p95"] == body["series"]["latency_p95"]  # served from the cache


def test_timeseries_hourly_tier_and_route_filter(server: DashboardServer, data: Populated) -> None:
    """Whole-hour steps over 7 days count every request once, old burst included; route= filters."""
    to = data.now
    r = get(server, "metrics/timeseries", metric="requests,latency_p50", step=3600,
            **{"from": to - 7 * 86400, "to": to})
    assert r.status_code == 200, r.text
    body = r.json()
    everything = raw_requests(data.db, body["from"], body["to"])
    assert sum(body["series"]["requests"]) == len(everything)
    assert len(body["timestamps"]) == 169
    only = get(server, "metrics/timeseries", metric="requests", route="/search", step=600,
               **{"from": to - 3 * 3600, "to": to}).json()
    assert sum(only["series"]["requests"]) == len(
        raw_requests(data.db, only["from"], only["to"], route="/search"))
    xss = get(server, "metrics/timeseries", metric="requests", route=XSS_ROUTE, step=3600,
              **{"from": to - 4 * 3600, "to": to}).json()
    assert xss["route"] == XSS_ROUTE and sum(xss["series"]["requests"]) > 0


def test_routes_table_matches_raw_rows(server: DashboardServer, data: Populated) -> None:
    """Each route's count, errors and p95 equal the raw rows'; sort=p95 orders by latency."""
    r = get(server, "routes", hours=2, sort="p95")
    body = r.json()
    lo, hi = body["from"], body["to"]
    rows = raw_requests(data.db, (int(lo) // 60) * 60, hi + 60)
    by_route: dict[str, list[dict[str, Any]]] = {}
    for x in rows:
        by_route.setdefault(x["route"], []).append(x)
    assert {e["route"] for e in body["routes"]} == set(by_route)
    for e in body["routes"]:
        raw = by_route[e["route"]]
        assert e["requests"] == len(raw)
        assert e["errors"] == sum(1 for x in raw if x["status"] >= 500)
        assert close(e["p95_ms"], exact_percentile([x["ms"] for x in raw], 95))
    p95s = [e["p95_ms"] for e in body["routes"]]
    assert p95s == sorted(p95s, reverse=True)
    assert "\\u003cscript\\u003e" in r.text and "<script>" not in r.text  # escaped even in JSON
    calls = get(server, "routes", hours=4, kind="call").json()
    assert [e["route"] for e in calls["routes"]] == ["jobs.fetch"]


def test_system_series_matches_raw_rows(server: DashboardServer, data: Populated) -> None:
    """CPU averages per slot and network byte rates equal those of the system_metrics rows."""
    to = data.now
    body = get(server, "metrics/system", step=600, **{"from": to - 7200, "to": to}).json()
    conn = sqlite3.connect(str(data.db))
    raw = conn.execute("SELECT timestamp, cpu_percent FROM system_metrics").fetchall()
    conn.close()
    from tests.dashboard_fixtures import _epoch

    for i, t in enumerate(body["timestamps"]):
        values = [cpu for ts, cpu in raw if t <= _epoch(ts) < t + 600]
        if values:
            assert body["series"]["cpu_percent"][i] == pytest.approx(sum(values) / len(values))
            assert body["series"]["readings"][i] == len(values)
    rates = [v for v in body["series"]["network_sent_per_s"] if v is not None]
    assert rates and all(v == pytest.approx(100.0) for v in rates)  # 3000 bytes per 30 s
    assert body["latest"]["cpu_percent"] == 10.0  # the newest reading
    assert body["stats"]["max_cpu_percent"] == 49.0


def test_logs_search_filters(server: DashboardServer) -> None:
    """Log search filters by text, minimum level and request id; bad full-text syntax is a 400."""
    assert [x["message"] for x in get(server, "logs", q="payment").json()["logs"]] == [
        "payment failed for order 7"]
    assert {x["message"] for x in get(server, "logs", level="WARNING").json()["logs"]} == {
        "slow query on search", "payment failed for order 7"}
    assert len(get(server, "logs", request_id="req-bbb").json()["logs"]) == 2
    bad = get(server, "logs", q='"unterminated')
    assert bad.status_code == 400 and "Cannot parse" in bad.json()["message"]


def test_alert_listing_and_openapi(server: DashboardServer) -> None:
    """Firing alerts are listed; the OpenAPI document names every endpoint."""
    alerts = get(server, "alerts").json()
    assert [a["name"] for a in alerts["active"]] == ["checkout_errors"]
    assert alerts["available"] is True
    spec = get(server, "openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {"/health", "/metrics/summary", "/metrics/timeseries",
                                  "/metrics/system", "/routes", "/alerts",
                                  "/alerts/{id}/acknowledge", "/logs", "/requests",
                                  "/requests/{request_id}", "/routes/{route}", "/errors",
                                  "/errors/{group_id}", "/profile", "/openapi.json"}


# -- bad parameters ----------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "params", "needle"), [
    ("metrics/summary", {"hours": "abc"}, "hours"),
    ("metrics/summary", {"hours": "-1"}, "hours"),
    ("metrics/summary", {"hours": "nan"}, "hours"),
    ("metrics/summary", {"kind": "bogus"}, "kind"),
    ("metrics/timeseries", {"metric": "cpu;drop table"}, "metric"),
    ("metrics/timeseries", {"step": "59"}, "step"),
    ("metrics/timeseries", {"step": "90"}, "multiple of 60"),
    ("metrics/timeseries", {"step": "1e3"}, "step"),
    ("metrics/timeseries", {"from": "yesterday"}, "from"),
    ("metrics/timeseries", {"from": "1700000000000"}, "milliseconds"),
    ("metrics/timeseries", {"from": "1700003600", "to": "1700000000"}, "earlier"),
    ("metrics/timeseries", {"from": "1690000000", "to": "1700000000", "step": "60"}, "points"),
    ("metrics/timeseries", {"from": "1600000000", "to": "1700000000", "step": "3600"}, "400 days"),
    ("metrics/timeseries", {"route": "x" * 600}, "route"),
    ("metrics/timeseries", {"route": "a\x00b"}, "control"),
    ("metrics/system", {"step": "-60"}, "step"),
    ("routes", {"sort": "name; --"}, "sort"),
    ("routes", {"limit": "0"}, "limit"),
    ("routes", {"hours": "1", "from": "1700000000"}, "either"),
    ("alerts", {"limit": "many"}, "limit"),
    ("logs", {"level": "LOUD"}, "level"),
    ("logs", {"from": "not-a-time"}, "from"),
])
def test_bad_parameters_get_a_400_with_a_message(server: DashboardServer, path: str,
                                                 params: dict[str, str], needle: str) -> None:
    """Every malformed parameter is a JSON 400 naming the problem, never a 500 or a traceback."""
    r = get(server, path, **params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["status"] == 400 and needle in body["message"]
    assert "Traceback" not in r.text


def test_repeated_parameter_and_unknown_endpoint(server: DashboardServer) -> None:
    """A parameter given twice is a 400; an unknown endpoint a JSON 404; a wrong method a 405."""
    r = requests.get(base(server) + API + "metrics/summary?hours=1&hours=2", headers=AUTH,
                     timeout=10)
    assert r.status_code == 400 and "more than once" in r.json()["message"]
    assert get(server, "metrics/nothing").status_code == 404
    r = requests.post(base(server) + API + "metrics/summary", headers=AUTH, timeout=10)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD"


# -- security ------------------------------------------------------------------------------
def test_off_without_token_or_public_and_says_how_to_enable(
        data: Populated, caplog: pytest.LogCaptureFixture) -> None:
    """With neither setting every dashboard path is a 404, and the log says how to turn it on.

    Only the status-only health check answers (issue 17), and it says nothing but the verdict.
    """
    caplog.set_level(logging.WARNING, logger="instrument")
    import threading

    from instrument.dashboard.server import serve

    dashboard = Dashboard(str(data.db))
    stop = threading.Event()
    box: list[DashboardServer] = []
    thread = threading.Thread(target=serve, args=(dashboard, "127.0.0.1", 0),
                              kwargs={"ready": box.append, "stop": stop}, daemon=True)
    thread.start()
    try:
        srv = wait_until(lambda: box and box[0], what="server")
        for path in ("/monitoring", "/monitoring/login", "/monitoring/static/app.js",
                     API + "metrics/summary", API + "openapi.json"):
            r = requests.get(base(srv) + path, headers=AUTH, timeout=10)
            assert r.status_code == 404, path
            assert "instrument" not in r.text
        r = requests.get(base(srv) + API + "health", headers=AUTH, timeout=10)
        assert r.status_code == 200 and r.json() in ({"status": "ok"}, {"status": "degraded"})
    finally:
        stop.set()
        thread.join(10)
    assert any("INSTRUMENT_DASHBOARD_TOKEN" in rec.getMessage()
               and "INSTRUMENT_DASHBOARD_PUBLIC=true" in rec.getMessage() for rec in caplog.records)


def test_bearer_token_is_required_and_checked(server: DashboardServer) -> None:
    """The API refuses no token and a wrong token with 401, and accepts the right bearer token."""
    url = base(server) + API + "metrics/summary"
    assert requests.get(url, timeout=10).status_code == 401
    wrong = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(url, headers=AUTH, timeout=10).status_code == 200
    health = requests.get(base(server) + API + "health", timeout=10)
    assert set(health.json()) == {"status"}  # the verdict only: reasons need the token
    page = requests.get(base(server) + "/monitoring", timeout=10)
    assert page.status_code == 401 and 'name="token"' in page.text and "Kit health" not in page.text


def test_login_form_sets_a_signed_session_cookie(server: DashboardServer) -> None:
    """Signing in sets an HttpOnly SameSite cookie (not the token) that opens the page and API."""
    s = requests.Session()
    bad = s.post(base(server) + "/monitoring/login", data={"token": "guess"}, timeout=10)
    assert bad.status_code == 401 and "not right" in bad.text
    r = s.post(base(server) + "/monitoring/login", data={"token": TOKEN}, timeout=10,
               allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/monitoring"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    assert s.get(base(server) + API + "metrics/summary", timeout=10).status_code == 200
    page = s.get(base(server) + "/monitoring", timeout=10)
    assert page.status_code == 200 and "Kit health" in page.text
    value = s.cookies["instrument_session"]
    forged = requests.get(base(server) + API + "metrics/summary", timeout=10,
                          cookies={"instrument_session": value[:-4] + "0000"})
    assert forged.status_code == 401


def test_login_attempts_are_rate_limited(data: Populated) -> None:
    """After ten wrong tokens in a minute the form refuses even the right one (429)."""
    with running_server(data.db) as (srv, _):
        login = base(srv) + "/monitoring/login"
        for _ in range(10):
            assert requests.post(login, data={"token": "guess"}, timeout=10).status_code == 401
        r = requests.post(login, data={"token": TOKEN}, timeout=10, allow_redirects=False)
        assert r.status_code == 429 and "Set-Cookie" not in r.headers
        assert requests.get(base(srv) + API + "health", headers=AUTH, timeout=10).ok  # bearer


def test_acknowledge_needs_csrf_token_from_a_cookie_session(server: DashboardServer,
                                                            alerts_db: Path) -> None:
    """A cookie-session acknowledge without the CSRF header, or cross-site, is refused."""
    alert_id = get(server, "alerts").json()["active"][0]["id"]
    s = requests.Session()
    s.post(base(server) + "/monitoring/login", data={"token": TOKEN}, timeout=10)
    s.get(base(server) + "/monitoring", timeout=10)  # sets the instrument_csrf cookie
    csrf = s.cookies["instrument_csrf"]
    url = f"{base(server)}{API}alerts/{alert_id}/acknowledge"
    assert s.post(url, timeout=10).status_code == 403
    assert s.post(url, headers={"X-CSRF-Token": "other"}, timeout=10).status_code == 403
    cross = s.post(url, headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
                   timeout=10)
    assert cross.status_code == 403
    site = s.post(url, headers={"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}, timeout=10)
    assert site.status_code == 403
    assert get(server, "alerts").json()["active"][0]["acknowledged_at"] is None
    ok = s.post(url, headers={"X-CSRF-Token": csrf}, json={"by": "alice"}, timeout=10)
    assert ok.status_code == 200, ok.text
    assert ok.json()["alert"]["acknowledged_by"] == "alice"
    assert ok.json()["alert"]["description"] == "Too many 5xx"  # rewritten as the app wrote it
    conn = sqlite3.connect(str(alerts_db))
    row = conn.execute("SELECT acknowledged_at, acknowledged_by FROM alerts WHERE id = ?",
                       (alert_id,)).fetchone()
    conn.close()
    assert row[0] is not None and row[1] == "alice"
    unknown = requests.post(f"{base(server)}{API}alerts/nosuchalert/acknowledge", headers=AUTH,
                            timeout=10)  # bearer: no CSRF token needed
    assert unknown.status_code == 404


def test_responses_carry_restrictive_headers(server: DashboardServer) -> None:
    """Page, assets and API send a CSP without inline code, nosniff and frame denial."""
    for path in ("/monitoring", "/monitoring/static/app.js", API + "health"):
        r = requests.get(base(server) + path, headers=AUTH, timeout=10)
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    js = requests.get(base(server) + "/monitoring/static/app.js", timeout=10).text
    assert "innerHTML" not in js and "eval(" not in js and "http://" not in js.replace(
        "http://www.w3.org/2000/svg", "")


# -- health ------------------------------------------------------------------------------------
def test_health_standalone_reports_store_facts(server: DashboardServer, data: Populated) -> None:
    """Standalone health answers 200 with the newest data it can see in the store."""
    r = get(server, "health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] in ("ok", "degraded")
    assert body["checks"]["store"]["last_request_minute"] >= int(data.now // 60) * 60 - 180


def test_health_in_process_degrades_on_backend_errors(tmp_path: Path) -> None:
    """In an app whose backend is failing, health says degraded and names the backend."""
    instrument.configure(backends=[FailingBackend(failures=1000)], flush_interval=0.05)
    from instrument.core.runtime import runtime

    runtime.recorder.add(("call", 0.0, 0.001, "x", None))
    wait_until(lambda: runtime.stats()["backends"][0]["consecutive_failures"] >= 1,
               what="a failed write")
    dashboard = Dashboard(str(tmp_path / "none.db"), public=True, in_process=True)
    try:
        from instrument.dashboard._http import Request

        r = dashboard(Request("GET", API.rstrip("/") + "/health"))
        body = json.loads(r.body)
        assert r.status == 200 and body["status"] == "degraded"
        assert any("failing" in reason for reason in body["reasons"])
    finally:
        dashboard.close()
        instrument.shutdown(0.2)  # the backend never recovers: do not wait for it


def test_health_verdicts_from_kit_stats() -> None:
    """A dead flusher or a backend failing 5 times in a row is failing; recent drops degrade."""
    watch = DropWatch()
    failing, degraded = in_process({"enabled": True, "alive": False, "dropped": 0}, watch, 100.0)
    assert failing and not degraded
    stats = {"enabled": True, "alive": True, "dropped": 3,
             "backends": [{"name": "sqlite", "consecutive_failures": 5, "last_error": "locked"}]}
    failing, degraded = in_process(stats, watch, 100.0)
    assert any("sqlite" in f for f in failing) and any("dropped" in d for d in degraded)
    failing, degraded = in_process({**stats, "backends": []}, watch, 100.0 + 301)
    assert not failing and not degraded  # the drops are old news


# -- the command ---------------------------------------------------------------------------------
def test_instrument_dashboard_command_serves_until_terminated(data: Populated) -> None:
    """`instrument dashboard --port 0` prints its URL, serves with the token, stops on SIGTERM."""
    env = {**os.environ, "INSTRUMENT_DASHBOARD_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "instrument.cli", "dashboard", "--db",
                             str(data.db), "--port", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/monitoring", line)
        assert match, line
        root = f"http://127.0.0.1:{match.group(1)}"
        r = requests.get(root + API + "metrics/summary", params={"hours": 4}, headers=AUTH,
                         timeout=10)
        assert r.status_code == 200 and r.json()["requests"]["requests"] > 100
        assert requests.get(root + API + "metrics/summary", timeout=10).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
    assert code == 0


# -- caches follow late data ---------------------------------------------------------------------
def test_caches_pick_up_late_writes_to_old_slots(tmp_path: Path) -> None:
    """Rows flushed late into an already-served slot change the next answer (no stale cache)."""
    from instrument.backends.sqlite import SQLiteBackend
    from instrument.core.aggregate import Aggregator
    from instrument.dashboard._http import Request

    db = tmp_path / "late.db"
    now = time.time()
    slot = int(now // 3600) * 3600 - 3 * 3600  # an hour well in the past
    offset = time.time() - time.perf_counter()

    def write(ms: float, cpu: float) -> None:
        t0 = slot + 600 - offset
        backend = SQLiteBackend(str(db))
        backend.write(Aggregator().aggregate([
            ("http", t0, t0 + ms / 1000, 0.0, "/late", "GET", 200, 0, 0, None, False),
            ("system", slot + 600, {"cpu_percent": cpu, "network_bytes_sent": 0})]))
        backend.close()

    dashboard = Dashboard(str(db), public=True)
    query = f"from={slot}&to={slot + 3600}&step=3600"

    def ask(path: str, extra: str = "") -> dict[str, Any]:
        r = dashboard(Request("GET", API + path, query + extra))
        assert r.status == 200, r.body
        return json.loads(r.body)

    try:
        write(10.0, 20.0)
        first = ask("metrics/timeseries", "&metric=requests,latency_p99")["series"]
        assert first["requests"] == [1] and first["latency_p99"][0] < 11
        assert ask("metrics/system")["series"]["cpu_percent"] == [20.0]
        write(1000.0, 40.0)  # a late flush into the same hour
        second = ask("metrics/timeseries", "&metric=requests,latency_p99")["series"]
        assert second["requests"] == [2] and second["latency_p99"][0] > 900
        assert ask("metrics/system")["series"]["cpu_percent"] == [30.0]
    finally:
        dashboard.close()


def test_benchmark_script_quick_mode(tmp_path: Path) -> None:
    """benchmarks/dashboard.py --quick builds a store, times every page call, weighs the page."""
    out = tmp_path / "bench.json"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "dashboard.py"), "--quick",
                           "--requests", "20000", "--days", "1", "--repeat", "2",
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["requests"] > 15_000
    cases = {(r["endpoint"], r["range"]) for r in data["results"]}
    assert {("summary", "7d"), ("timeseries", "15m"), ("system", "24h"), ("health", "-")} <= cases
    assert all(r["p95_ms"] > 0 for r in data["results"])
    assert 10_000 < data["page_weight"]["total_bytes"] < 100_000
