"""The first five minutes (issue 17): a sign-in link, open status-only health, typo warnings.

Everything runs for real: ``instrument dashboard`` as a subprocess whose printed
link is followed by an HTTP client and by Chromium, Flask on werkzeug and
FastAPI on uvicorn for the in-app health check.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import requests
from fastapi import FastAPI
from flask import Flask
from playwright.sync_api import expect, sync_playwright

import instrument
from instrument._envcheck import unknown_variables
from instrument.fastapi import InstrumentMiddleware as FastAPIInstrument
from instrument.flask import Instrument
from tests.dashboard_fixtures import populate
from tests.servers import uvicorn_server, werkzeug_server

TOKEN = "first-run-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEALTH = "/api/v1/monitoring/health"
CHROMIUM = "/usr/bin/chromium"
LINK = re.compile(r"sign in: (http://127\.0\.0\.1:\d+/monitoring/login\?token=([\w-]+))")


def _lines(stream: IO[str], out: queue.Queue[str]) -> None:
    for line in stream:
        out.put(line)


@pytest.fixture
def dashboard_cli(tmp_path: Path) -> Iterator[tuple[str, str, list[str]]]:
    """``instrument dashboard`` over a populated file, no token configured: (link, token, out)."""
    data = populate(tmp_path / "metrics.db", recent_minutes=30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTRUMENT_")}
    env["INSTRUMENT_ALERTS_DB"] = str(tmp_path / "alerts.db")
    proc = subprocess.Popen([sys.executable, "-m", "instrument.cli", "dashboard", "--db",
                             str(data.db), "--port", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        while True:
            seen.append(lines.get(timeout=20))
            match = LINK.search(seen[-1])
            if match:
                seen.append(lines.get(timeout=5))  # the line that says how to keep it
                break
        yield match.group(1), match.group(2), seen
    finally:
        proc.terminate()
        proc.wait(10)


def test_dashboard_without_a_token_prints_a_link_that_signs_in(
        dashboard_cli: tuple[str, str, list[str]]) -> None:
    """The printed link sets the session; the API then answers with the file's data."""
    link, token, out = dashboard_cli
    assert len(token) >= 24
    assert "INSTRUMENT_DASHBOARD_TOKEN" in "".join(out)
    base = link.split("/monitoring/")[0]
    assert "Kit health" not in requests.get(base + "/monitoring", timeout=10).text  # no link
    with requests.Session() as session:
        page = session.get(link, timeout=10)
        assert page.status_code == 200 and page.url.rstrip("/").endswith("/monitoring")
        assert "Kit health" in page.text
        summary = session.get(base + "/api/v1/monitoring/metrics/summary?hours=1",
                              timeout=10).json()
        assert summary["requests"]["requests"] > 0
    assert requests.get(base + "/api/v1/monitoring/routes", timeout=10).status_code == 401
    bare = requests.get(base + HEALTH, timeout=10)
    assert set(bare.json()) == {"status"}  # standalone health: the verdict only, no token
    detailed = requests.get(base + HEALTH, headers={"Authorization": f"Bearer {token}"},
                            timeout=10).json()
    assert detailed["checks"]["mode"] == "standalone"


def test_the_printed_link_opens_the_page_with_data_in_chromium(
        dashboard_cli: tuple[str, str, list[str]]) -> None:
    """Chromium follows the link and shows the routes of the file."""
    link, _, _ = dashboard_cli
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(link)
            assert page.url.rstrip("/").endswith("/monitoring")
            expect(page.get_by_text("/items/{id}").first).to_be_visible(timeout=15_000)
        finally:
            browser.close()


def _flask() -> Flask:
    app = Flask(__name__)

    @app.get("/hello")
    def hello() -> str:
        return "hi"

    Instrument(app)
    return app


def _fastapi() -> FastAPI:
    app = FastAPI()

    @app.get("/hello")
    def hello() -> str:
        return "hi"

    app.add_middleware(FastAPIInstrument)
    return app


APPS = {"flask": (_flask, werkzeug_server), "fastapi": (_fastapi, uvicorn_server)}


@pytest.mark.parametrize("kind", sorted(APPS))
def test_health_is_status_only_without_credentials_and_detailed_with_them(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside Flask and FastAPI apps, with and without a dashboard token configured."""
    build, serve = APPS[kind]
    with serve(build()) as url:  # no token: only health is mounted
        bare = requests.get(url + HEALTH, timeout=10)
        assert bare.status_code == 200 and bare.json() == {"status": "ok"}
        assert requests.get(url + "/api/v1/monitoring/routes", timeout=10).status_code == 404
    instrument.shutdown()
    monkeypatch.setenv("INSTRUMENT_DASHBOARD_TOKEN", TOKEN)
    with serve(build()) as url:
        assert requests.get(url + HEALTH, timeout=10).json() == {"status": "ok"}
        detailed = requests.get(url + HEALTH, headers=AUTH, timeout=10).json()
        assert detailed["status"] == "ok" and detailed["checks"]["mode"] == "in-process"
        assert "backends" in detailed["checks"]["kit"]


@pytest.mark.parametrize("kind", sorted(APPS))
def test_health_public_false_asks_for_the_token(kind: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSTRUMENT_DASHBOARD_TOKEN", TOKEN)
    monkeypatch.setenv("INSTRUMENT_HEALTH_PUBLIC", "false")
    build, serve = APPS[kind]
    with serve(build()) as url:
        assert requests.get(url + HEALTH, timeout=10).status_code == 401
        assert requests.get(url + HEALTH, headers=AUTH, timeout=10).json()["status"] == "ok"


def test_a_failing_kit_says_503_to_anyone(tmp_path: Path) -> None:
    """The verdict is real: a backend that keeps failing turns the open health check to 503."""

    class Broken:
        def write(self, batch: object) -> None:
            raise OSError("disk gone")

        def close(self) -> None:
            pass

    instrument.configure(backends=[Broken()], flush_interval=0.02)
    app = _flask()
    with werkzeug_server(app) as url:
        for _ in range(3):
            requests.get(url + "/hello", timeout=10)
        from tests.servers import wait_until

        wait_until(lambda: requests.get(url + HEALTH, timeout=10).status_code == 503,
                   timeout=20)
        assert requests.get(url + HEALTH, timeout=10).json() == {"status": "failing"}


def test_unknown_variables_are_named_once_with_the_closest_known_name(tmp_path: Path) -> None:
    """A typo warns at start-up, once, with the variable it probably meant; values stay unsaid."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTRUMENT_")}
    env.update(INSTRUMENT_FLUSH_INTERVALL="0.5", INSTRUMENT_SMTP_PASSWROD="hunter2-secret",
               INSTRUMENT_NOTHING_LIKE_IT="1")
    code = ("import instrument\n"
            "instrument.configure(metrics_db='metrics.db')\n"
            "instrument.configure(metrics_db='metrics.db')\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    err = done.stderr
    assert err.count("INSTRUMENT_FLUSH_INTERVALL") == 1, err
    assert "did you mean INSTRUMENT_FLUSH_INTERVAL?" in err
    assert "did you mean INSTRUMENT_SMTP_PASSWORD?" in err
    assert "INSTRUMENT_NOTHING_LIKE_IT" in err and "_envdoc" in err
    assert "hunter2" not in err
    assert unknown_variables({"INSTRUMENT_FLUSH_INTERVAL": "1", "OTHER": "x"}) == []
