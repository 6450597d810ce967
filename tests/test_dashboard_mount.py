"""The dashboard mounted by the adapters inside real Flask and Starlette apps on real servers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import requests
from flask import Flask
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import instrument
import instrument.dashboard
from instrument.flask import Instrument
from instrument.wsgi import InstrumentMiddleware
from tests.servers import query, settled_count, uvicorn_server, werkzeug_server

TOKEN = "mount-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def flask_app() -> Flask:
    app = Flask(__name__)

    @app.route("/hello")
    def hello() -> str:
        return "hi"

    @app.route("/monitoring")
    def own_monitoring() -> str:
        return "the app's own page"

    return app


def test_flask_app_serves_dashboard_without_recording_it(monkeypatch: pytest.MonkeyPatch,
                                                        db_path: Path) -> None:
    """With a token the Flask app answers /monitoring and the API; only app traffic is stored."""
    monkeypatch.setenv("INSTRUMENT_DASHBOARD_TOKEN", TOKEN)
    monkeypatch.setenv("INSTRUMENT_FLUSH_INTERVAL", "0.05")
    app = flask_app()
    Instrument(app)
    with werkzeug_server(app) as url:
        for _ in range(3):
            assert requests.get(url + "/hello", timeout=10).text == "hi"
        assert requests.get(url + "/monitoringx", timeout=10).status_code == 404  # the app's
        page = requests.get(url + "/monitoring", headers=AUTH, timeout=10)
        assert page.status_code == 200 and "Kit health" in page.text
        assert "Content-Security-Policy" in page.headers
        bare = requests.get(url + "/api/v1/monitoring/health", timeout=10)  # a load balancer
        assert bare.status_code == 200 and bare.json() == {"status": "ok"}
        assert settled_count(db_path, 4) == 4
        summary = requests.get(url + "/api/v1/monitoring/metrics/summary?hours=1", headers=AUTH,
                               timeout=10).json()
        assert summary["requests"]["requests"] == 4
        health = requests.get(url + "/api/v1/monitoring/health", headers=AUTH, timeout=10).json()
        assert health["checks"]["mode"] == "in-process" and health["checks"]["kit"]["alive"]
    instrument.flush()
    routes = sorted(r[0] for r in query(db_path, "SELECT endpoint FROM api_metrics"))
    assert routes == ["/hello", "/hello", "/hello", "__unmatched__"]


def test_without_token_the_app_keeps_its_paths_and_the_log_says_how(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Off by default: the app's own /monitoring answers, health says its status, one log line."""
    caplog.set_level(logging.INFO, logger="instrument")
    monkeypatch.setattr(instrument.dashboard, "_said_off", set())  # said once per process
    app = flask_app()
    app.wsgi_app = InstrumentMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    with werkzeug_server(app) as url:
        assert requests.get(url + "/monitoring", headers=AUTH, timeout=10).text == \
            "the app's own page"
        health = requests.get(url + "/api/v1/monitoring/health", headers=AUTH, timeout=10)
        assert health.status_code == 200 and health.json() == {"status": "ok"}  # no details
        assert requests.get(url + "/api/v1/monitoring/routes", headers=AUTH,
                            timeout=10).status_code == 404  # the app's 404
    lines = [r.getMessage() for r in caplog.records if "dashboard" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "INSTRUMENT_DASHBOARD_TOKEN" in lines[0] and "INSTRUMENT_DASHBOARD_PUBLIC=true" in \
        lines[0] and "INSTRUMENT_HEALTH_PUBLIC=false" in lines[0]
    assert TOKEN not in caplog.text


def test_health_public_false_leaves_every_path_to_the_app(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """INSTRUMENT_HEALTH_PUBLIC=false and no token: the kit answers nothing at all."""
    monkeypatch.setenv("INSTRUMENT_HEALTH_PUBLIC", "false")
    app = flask_app()
    app.wsgi_app = InstrumentMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    with werkzeug_server(app) as url:
        assert requests.get(url + "/api/v1/monitoring/health", timeout=10).status_code == 404


def test_starlette_app_serves_dashboard_in_public_mode(monkeypatch: pytest.MonkeyPatch,
                                                      db_path: Path) -> None:
    """With INSTRUMENT_DASHBOARD_PUBLIC=true an ASGI app serves page and API, unrecorded."""
    monkeypatch.setenv("INSTRUMENT_DASHBOARD_PUBLIC", "true")

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/hello", hello)])
    from instrument.asgi import InstrumentMiddleware as ASGIInstrument

    app.add_middleware(ASGIInstrument)
    with uvicorn_server(app) as url:
        assert requests.get(url + "/hello", timeout=10).text == "hi"
        page = requests.get(url + "/monitoring", timeout=10)
        assert page.status_code == 200 and "app.js" in page.text
        js = requests.get(url + "/monitoring/static/app.js", timeout=10)
        assert js.status_code == 200 and js.headers["Content-Type"].startswith("text/javascript")
        assert settled_count(db_path, 1) == 1
        routes = requests.get(url + "/api/v1/monitoring/routes?hours=1", timeout=10).json()
        assert [(r["route"], r["requests"]) for r in routes["routes"]] == [("/hello", 1)]
        posted = requests.post(url + "/api/v1/monitoring/alerts/x/acknowledge", timeout=10)
        assert posted.status_code == 403  # public, but still no cross-site writes without CSRF
    instrument.flush()
    assert [r[0] for r in query(db_path, "SELECT endpoint FROM api_metrics")] == ["/hello"]
