"""Error groups: unhandled exceptions grouped as Sentry groups them, under real servers.

Flask under a real gunicorn (2 workers) and FastAPI under uvicorn; the groups and
occurrences are read back from the real SQLite file, through the dashboard's API
too, and through a real PostgreSQL cluster.
"""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import requests
from fastapi import FastAPI

import instrument
from instrument.backends.postgresql import PostgreSQLBackend
from instrument.core.aggregate import Aggregator
from instrument.core.buffer import KIND_CALL, KIND_HTTP
from instrument.core.errors import Grouper, in_app
from instrument.fastapi import instrument_app
from instrument.storage.error_query import group_detail, list_groups
from tests.dashboard_fixtures import TOKEN, running_server
from tests.pg_cluster import pg_cluster
from tests.servers import gunicorn_server, query, uvicorn_server

API = "/api/v1/monitoring/"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

APP = textwrap.dedent('''
    """Two routes share one bug (a helper); a third has two bugs of its own."""
    from flask import Flask, request

    import instrument
    from instrument.flask import Instrument

    app = Flask(__name__)


    def find_user(key):
        return {"alice": 1}[key]  # the shared bug: KeyError for anyone else


    @app.get("/users/<name>")
    def user(name):
        return str(find_user(name))


    @app.get("/profile")
    def profile():
        return str(find_user(request.args.get("who", "bob")))


    @app.get("/report/<int:n>")
    def report(n):
        if n % 2:
            raise ValueError(f"odd report {n} password=hunter2")
        return str(1 // (n - n))  # ZeroDivisionError: a different bug in the same view


    @app.get("/ok")
    def ok():
        return "ok"


    @instrument.timed(name="nightly")
    def nightly():
        raise RuntimeError("the nightly job broke")


    @app.get("/run-job")
    def run_job():
        try:
            nightly()
        except RuntimeError:
            return "job failed", 200
        return "done"


    Instrument(app)
''')


def groups(db: Path) -> dict[str, dict[str, Any]]:
    names = ("group_id", "type", "message", "culprit", "first_seen", "last_seen", "count",
             "traceback")
    rows = query(db, f"SELECT {', '.join(names)} FROM error_groups")
    return {r[1]: dict(zip(names, r, strict=True)) for r in rows}


def routes_of(db: Path, group_id: str) -> set[str]:
    return {r[0] for r in query(db, "SELECT DISTINCT route FROM error_occurrences"
                                    " WHERE group_id = ?", group_id)}


@pytest.fixture(scope="module")
def gunicorn_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app under gunicorn, its requests sent, its store written and the server stopped."""
    tmp = tmp_path_factory.mktemp("errors")
    app_dir = tmp / "app"
    app_dir.mkdir()
    (app_dir / "eapp.py").write_text(APP)
    db = tmp / "metrics.db"
    env = {"INSTRUMENT_METRICS_DB": str(db), "INSTRUMENT_FLUSH_INTERVAL": "0.1"}
    with gunicorn_server(app_dir, "eapp:app", env=env) as server, requests.Session() as s:
        answered: Counter[int] = Counter()
        for i in range(20):
            for path in (f"/users/u{i}", f"/profile?who=p{i}", f"/report/{i}", "/ok", "/run-job"):
                answered[s.get(server.url + path, timeout=10).status_code] += 1
        assert server.terminate() == 0, server.output()
    assert answered == {500: 60, 200: 40}
    return db


def test_one_bug_on_two_routes_is_one_group(gunicorn_db: Path) -> None:
    """The helper's KeyError, raised from two views in two workers, is one group with both."""
    g = groups(gunicorn_db)["KeyError"]
    assert g["count"] == 40
    assert g["culprit"] == "eapp in find_user"
    assert routes_of(gunicorn_db, g["group_id"]) == {"/users/<name>", "/profile"}
    assert len({pid for (pid,) in query(gunicorn_db, "SELECT DISTINCT pid FROM error_occurrences"
                                                     " WHERE group_id = ?", g["group_id"])}) >= 1


def test_two_bugs_in_one_route_are_two_groups(gunicorn_db: Path) -> None:
    """/report raises a ValueError and a ZeroDivisionError from two lines: two groups."""
    g = groups(gunicorn_db)
    value, zero = g["ValueError"], g["ZeroDivisionError"]
    assert value["group_id"] != zero["group_id"]
    assert (value["count"], zero["count"]) == (10, 10)
    assert routes_of(gunicorn_db, value["group_id"]) == {"/report/<int:n>"}
    assert routes_of(gunicorn_db, zero["group_id"]) == {"/report/<int:n>"}
    # the latest message, with the secret redacted; the traceback has no locals, ends in eapp
    assert value["message"].startswith("odd report ") and "hunter2" not in value["message"]
    tb = json.loads(value["traceback"])
    assert tb["frames"][-1]["function"] == "report" and tb["frames"][-1]["in_app"] is True
    assert any(not f["in_app"] for f in tb["frames"])  # Flask's own frames, marked
    assert set(tb["frames"][-1]) == {"file", "line", "function", "code", "in_app"}
    assert 'raise ValueError(f"odd report {n} password=hunter2")' in tb["frames"][-1]["code"]


def test_a_timed_job_that_raises_is_grouped_under_its_name(gunicorn_db: Path) -> None:
    """@timed's RuntimeError (caught by the view afterwards) is a group of kind call."""
    g = groups(gunicorn_db)["RuntimeError"]
    assert g["count"] == 20 and g["culprit"] == "eapp in nightly"
    assert query(gunicorn_db, "SELECT DISTINCT kind, route FROM error_occurrences"
                              " WHERE group_id = ?", g["group_id"]) == [("call", "nightly")]


def test_each_failing_request_leads_to_its_group(gunicorn_db: Path) -> None:
    """Every HTTP occurrence carries the request id its exemplar row has."""
    rows = query(gunicorn_db, "SELECT o.request_id, e.request_id FROM error_occurrences o"
                              " LEFT JOIN request_exemplars e ON e.request_id = o.request_id"
                              " WHERE o.kind = 'http'")
    assert len(rows) == 60
    assert all(rid and rid == ex for rid, ex in rows)


def test_the_api_lists_groups_and_shows_one(gunicorn_db: Path) -> None:
    """errors, errors/{id}, requests/{id} and routes/{route} answer from the same rows."""
    g = groups(gunicorn_db)
    with running_server(gunicorn_db) as (srv, _):
        root = srv.url[: -len("/monitoring")] + API
        listing = requests.get(root + "errors", headers=AUTH, timeout=10).json()
        assert {x["type"]: x["count"] for x in listing["groups"]} == {
            "KeyError": 40, "ValueError": 10, "ZeroDivisionError": 10, "RuntimeError": 20}
        key = next(x for x in listing["groups"] if x["type"] == "KeyError")
        assert sum(key["sparkline"]) == 40
        assert {r["route"] for r in key["routes"]} == {"/users/<name>", "/profile"}
        one = requests.get(root + "errors/" + g["KeyError"]["group_id"], headers=AUTH,
                           timeout=10).json()["group"]
        assert one["count"] == 40 and one["traceback"]["frames"][-1]["function"] == "find_user"
        assert sum(p["count"] for p in one["per_minute"]) == 40
        rid = one["occurrences"][0]["request_id"]
        page = requests.get(root + "requests/" + rid, headers=AUTH, timeout=10).json()
        assert page["error_group"]["group_id"] == g["KeyError"]["group_id"]
        assert page["request"]["status_code"] == 500
        route = requests.get(root + "routes/" + requests.utils.quote("/report/<int:n>", safe=""),
                             params={"method": "GET"}, headers=AUTH, timeout=10).json()
        assert route["stats"]["requests"] == 20 and route["stats"]["errors"] == 20
        assert {x["type"] for x in route["error_groups"]} == {"ValueError", "ZeroDivisionError"}
        assert sum(b["count"] for b in route["histogram"]) == 20
        assert len(route["failing"]) == 10  # newest first, up to 10
        # bad input is a 400, an unknown group a 404, no token a 401
        assert requests.get(root + "errors/nothex", headers=AUTH, timeout=10).status_code == 400
        assert requests.get(root + "errors/" + "0" * 16, headers=AUTH,
                            timeout=10).status_code == 404
        assert requests.get(root + "errors", timeout=10).status_code == 401
        assert requests.get(root + "routes/%2Fnever", headers=AUTH, timeout=10).status_code == 404


def test_fastapi_groups_under_uvicorn_and_passes_the_exception_through(db_path: Path) -> None:
    """An async view's bug is grouped, the trace id stored, and the response still a 500."""
    instrument.configure(metrics_db=str(db_path), flush_interval=0.1)
    app = FastAPI()

    def parse(raw: str) -> int:
        return int(raw)  # ValueError for anything but digits

    @app.get("/a/{raw}")
    async def a(raw: str) -> dict[str, int]:
        return {"n": parse(raw)}

    @app.get("/b/{raw}")
    async def b(raw: str) -> dict[str, int]:
        return {"n": parse(raw) * 2}

    instrument_app(app)
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with uvicorn_server(app) as url:  # a new connection each: uvicorn closes one after a 500
        for i in range(5):
            assert httpx.get(f"{url}/a/x{i}", headers={"traceparent": caller}).status_code == 500
            assert httpx.get(f"{url}/b/y{i}").status_code == 500
            assert httpx.get(f"{url}/a/{i}").status_code == 200
        assert instrument.flush(10.0)
    g = groups(db_path)["ValueError"]
    assert g["count"] == 10 and g["culprit"].endswith(" in test_fastapi_groups_under_uvicorn_"
                                                      "and_passes_the_exception_through.<locals>"
                                                      ".parse")
    assert routes_of(db_path, g["group_id"]) == {"/a/{raw}", "/b/{raw}"}
    traces = Counter(t for (t,) in query(db_path, "SELECT trace_id FROM error_occurrences"))
    assert traces["4bf92f3577b34da6a3ce929d0e0e4736"] == 5


# -- the fingerprint ---------------------------------------------------------------------
_FILES = iter(range(10_000))


def _raise(source: str, name: str = "boom", **names: Any) -> BaseException:
    """Raise from a real file (tracebacks read source lines), as module ``userapp``."""
    path = Path(tempfile.gettempdir()) / f"instrument-userapp-{os.getpid()}-{next(_FILES)}.py"
    path.write_text(source)
    scope: dict[str, Any] = {"__name__": "userapp", **names}
    exec(compile(source, str(path), "exec"), scope)
    try:
        scope[name]()
    except BaseException as e:
        return e
    raise AssertionError("did not raise")


def test_a_group_survives_lines_moving_but_not_a_new_line() -> None:
    """Same function, same failing line text, shifted by edits above: one group."""
    g = Grouper()
    body = "def boom():\n    return {}['k']\n"
    first = g.group(_raise(body))[0]
    assert g.group(_raise("\n\n\n# a comment\n" + body))[0] == first
    assert g.group(_raise("def boom():\n    return {}['other']\n"))[0] != first
    assert g.group(_raise(body.replace("{}['k']", "[][1]")))[0] != first  # IndexError


def test_frames_of_the_kit_and_of_packages_are_not_the_users() -> None:
    """in_app: the user's files yes; the stdlib, site-packages and the kit itself no."""
    assert in_app("/srv/userapp.py") and in_app(__file__)
    assert not in_app(json.__file__) and not in_app(requests.__file__)
    assert not in_app(instrument.__file__) and not in_app("<frozen runpy>")


def test_an_exception_never_raised_is_grouped_by_type_and_message() -> None:
    """No traceback: its type and message, digits folded, decide."""
    g = Grouper()
    assert g.group(KeyError("user 12"))[0] == g.group(KeyError("user 345"))[0]
    assert g.group(KeyError("user 12"))[0] != g.group(KeyError("order 12"))[0]


def test_the_aggregator_groups_calls_and_keeps_types_for_the_rest() -> None:
    """An instance is grouped; a bare type (a client call's) only counted; exc names kept."""
    agg = Aggregator()
    err = _raise("def boom():\n    raise OSError('disk')\n")
    t = time.perf_counter()
    batch = agg.aggregate([
        (KIND_CALL, t, t + 0.001, "job", err),
        (KIND_CALL, t, t + 0.001, "job", OSError),
        (KIND_HTTP, t, t + 0.001, t, "/x", "GET", 404, 0, 0, err, False),  # a handled 4xx
    ])
    assert len(batch.error_values) == 10 and len(batch.error_groups) == 1
    assert batch.error_groups[0][6] == 1 and batch.error_groups[0][1] == "OSError"
    assert [r[6] for r in batch.calls] == ["OSError", "OSError"]
    assert batch.requests[0][9] == "OSError"


def test_postgresql_stores_and_reads_the_same_groups() -> None:
    """Two writers (two hosts) add to one group row; the read side answers as over SQLite."""
    agg = Aggregator()
    e1 = _raise("def boom():\n    raise LookupError(TEXT)\n", TEXT="x 1")
    e2 = _raise("def boom():\n    raise LookupError(TEXT)\n", TEXT="x 2")
    t = time.perf_counter()
    with pg_cluster() as cluster:
        url = cluster.new_schema()
        a = PostgreSQLBackend(url, instance="a")
        b = PostgreSQLBackend(url, instance="b")
        for backend, exc, at in ((a, e1, t), (b, e2, t + 1.0)):  # b's is the later: it wins
            batch = agg.aggregate([(KIND_CALL, at, at + 0.01, "job", exc)] * 3)
            backend.write(batch)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count, message FROM error_groups").fetchall() == [
                (6, "x 2")]
            assert conn.execute("SELECT host, count(*) FROM error_occurrences GROUP BY host"
                                " ORDER BY host").fetchall() == [("a", 3), ("b", 3)]
        from instrument.storage.pg_read import PgQueryConnection
        with psycopg.connect(url) as raw:
            conn = PgQueryConnection(raw)
            now = time.time()
            _step, listed = list_groups(conn, now - 600, now + 60)
            assert [(x["type"], x["count"]) for x in listed] == [("LookupError", 6)]
            one = group_detail(conn, listed[0]["group_id"], now - 600, now + 60)
            assert one is not None and one["traceback"]["frames"][-1]["function"] == "boom"
        a.close()
        b.close()


def test_a_stored_group_outlives_nothing_past_retention(db_path: Path) -> None:
    """Retention removes old occurrences and groups last seen before the cutoff."""
    from instrument.backends.sqlite import SQLiteBackend

    backend = SQLiteBackend(str(db_path), retention_days=1)
    t = time.perf_counter()
    backend.write(Aggregator().aggregate([(KIND_CALL, t, t, "job", _raise(
        "def boom():\n    raise KeyError(1)\n"))]))
    assert query(db_path, "SELECT count(*) FROM error_occurrences") == [(1,)]
    backend.apply_retention(now=time.time() + 3 * 86400)
    assert query(db_path, "SELECT count(*) FROM error_occurrences") == [(0,)]
    assert query(db_path, "SELECT count(*) FROM error_groups") == [(0,)]
    backend.close()


# -- alerts that point at their cause ------------------------------------------------------
def test_an_error_rate_alert_points_at_its_route_and_error_group(db_path: Path,
                                                                tmp_path: Path) -> None:
    """Webhook, Slack and the alerts table carry the failing route and the top error group."""
    from flask import Flask

    from instrument.alerting import AlertManager, AlertRule
    from instrument.alerting.state import AlertSeverity
    from instrument.backends.slack import SlackChannel
    from instrument.backends.webhook import WebhookChannel
    from instrument.flask import Instrument
    from instrument.metrics_collector import MetricsCollector
    from tests.alert_receivers import http_recorder
    from tests.servers import werkzeug_server

    instrument.configure(metrics_db=str(db_path), flush_interval=0.1)
    app = Flask(__name__)

    def charge(amount: int) -> int:
        raise ConnectionError(f"payment gateway refused {amount}")

    @app.post("/pay/<int:amount>")
    def pay(amount: int) -> str:
        return str(charge(amount))

    @app.get("/ok")
    def ok() -> str:
        return "ok"

    Instrument(app)
    with werkzeug_server(app) as url:
        for i in range(6):
            assert requests.post(f"{url}/pay/{i}", timeout=10).status_code == 500
            assert requests.get(f"{url}/ok", timeout=10).status_code == 200
    assert instrument.flush(10.0)
    group_id = groups(db_path)["ConnectionError"]["group_id"]
    collector = MetricsCollector(db_path=str(db_path))
    with http_recorder() as hook, http_recorder() as slack:
        manager = AlertManager(db_path=str(tmp_path / "alerts.db"), default_rules=False,
                               log_alerts=False, metrics_provider=collector.get_current_metrics)
        try:
            manager.add_channel(WebhookChannel(hook.url + "/hook"))
            manager.add_channel(SlackChannel(slack.url + "/slack"))
            manager.add_rule(AlertRule("errors", "Error rate high", AlertSeverity.HIGH,
                                       "api.error_rate_percent > 10"))
            manager.evaluate()
            [sent] = hook.wait_for(1)
            [posted] = slack.wait_for(1)
            stored = manager.get_alerts()
        finally:
            manager.close()
            collector.close()
    notes = sent.body["alerts"][0]["annotations"]  # Alertmanager's webhook shape
    assert notes["route"] == "POST /pay/<int:amount>"
    assert notes["route_link"] == "/monitoring#/routes/%2Fpay%2F%3Cint%3Aamount%3E?method=POST"
    assert notes["error_group"] == "ConnectionError"
    assert notes["error_group_link"] == f"/monitoring#/errors/{group_id}"
    cause = stored[0]["metadata"]["cause"]
    assert cause["route"]["route"] == "/pay/<int:amount>" and cause["route"]["errors"] == 6
    assert cause["error_group"]["group_id"] == group_id
    fields = {f["title"]: f["value"] for f in posted.body["attachments"][0]["fields"]}
    assert fields["Cause"].startswith("Likely cause: POST /pay/<int:amount> (6 errors")
    assert f"/monitoring#/errors/{group_id}" in fields["Cause"]


def test_a_latency_rule_points_at_the_slowest_route_and_others_at_nothing() -> None:
    """cause_of: error figures -> most failing route, latency -> slowest, system -> none."""
    from instrument.alerting.cause import cause_of

    metrics = {"cause": {"error_route": {"route": "/a", "method": "GET", "errors": 3},
                         "slow_route": {"route": "/b", "method": "GET", "p95_ms": 900.0},
                         "error_group": None}}
    assert cause_of("api.error_rate_percent", metrics)["route"]["route"] == "/a"
    assert cause_of("api.p95_response_time_ms", metrics)["route"]["route"] == "/b"
    assert cause_of("system.cpu_percent", metrics) is None
    assert cause_of("api.request_count", metrics) is None
