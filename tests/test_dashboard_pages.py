"""The route, request and error pages in a real browser (Playwright over Debian's Chromium).

The data is real: a Flask app behind the kit, served by werkzeug, with the profiler on
and JSON logs stored; the dashboard then serves that SQLite file. A route sleeps 200 ms
on every tenth request; another raises an exception whose message and path carry markup.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask
from playwright.sync_api import Browser, expect

import instrument
from instrument.dashboard.server import DashboardServer
from instrument.logs import setup_logging
from tests.dashboard_fixtures import TOKEN, running_server
from tests.servers import query, werkzeug_server
from tests.test_dashboard_browser import ARTIFACTS, Watched
from tests.test_dashboard_browser import browser as browser  # the module's Chromium

INJECTED = "<img src=x onerror=window.__xss=1>"
MESSAGE = "<script>window.__xss=2</script> bad order"


def slow_part(n: int) -> None:
    if n % 10 == 0:
        time.sleep(0.2)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    db = tmp_path_factory.mktemp("pages") / "metrics.db"
    instrument.configure(metrics_db=str(db), flush_interval=0.2, profiler=True, profiler_hz=200)
    log = setup_logging(logger="pagesapp", stream=io.StringIO())
    app = Flask(__name__)

    @app.get("/items/<int:n>")
    def item(n: int) -> dict[str, int]:
        log.info("loading item %d", n)
        slow_part(n)
        log.info("item %d done", n)
        return {"n": n}

    @app.get("/orders/<path:ref>")
    def order(ref: str) -> str:
        raise ValueError(MESSAGE)

    from instrument.flask import Instrument

    Instrument(app)
    with werkzeug_server(app) as url, requests.Session() as s:
        for n in range(1, 41):
            assert s.get(f"{url}/items/{n}", timeout=10).status_code == 200
        for _ in range(3):
            assert s.get(f"{url}/orders/{INJECTED}", timeout=10).status_code == 500
    instrument.shutdown()
    logging.getLogger("pagesapp").handlers.clear()
    yield db


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[DashboardServer]:
    with running_server(store) as (srv, _):
        yield srv


@pytest.fixture
def page(browser: Browser, server: DashboardServer) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    w = Watched(context.new_page())
    r = w.page.context.request.post(server.url + "/login", form={"token": TOKEN},
                                    max_redirects=0)
    assert r.status == 303
    w.page.on("dialog", lambda d: w.errors.append(f"dialog: {d.message}"))
    yield w
    context.close()


def shot(w: Watched, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    w.page.screenshot(path=str(ARTIFACTS / f"pages-{name}.png"), full_page=True)


def test_route_page_lists_its_slowest_requests_and_leads_to_their_logs(
        page: Watched, server: DashboardServer, store: Path) -> None:
    """Overview -> route page (its slowest are the 200 ms ones) -> request page, logs in order."""
    slow_ids = {rid for (rid,) in query(store, "SELECT request_id FROM request_exemplars WHERE"
                                               " route = '/items/<int:n>' AND duration_ms > 150")}
    assert len(slow_ids) == 4  # requests 10, 20, 30, 40
    p = page.page
    p.goto(server.url + "#range=1h")
    link = p.locator("#routes-slow a.route-link", has_text="/items/<int:n>")
    expect(link).to_be_visible(timeout=15_000)
    link.click()
    expect(p.locator("#page .page-title")).to_have_text("GET /items/<int:n>", timeout=15_000)
    slow = p.locator("#page section", has_text="Slowest requests")
    shown = slow.locator("a.request-link").all_inner_texts()
    assert set(shown[:4]) == slow_ids
    expect(p.locator("#page .flame svg g.frame").first).to_be_attached()
    assert p.locator("#page .flame title", has_text="slow_part").count() >= 1
    expect(p.locator("#page .histogram rect.bar").first).to_be_attached()
    shot(page, "route")
    slow.locator("a.request-link").first.click()
    expect(p.locator("#page .page-title")).to_contain_text("/items/", timeout=15_000)
    logs = p.locator("#page section", has_text="Log lines").locator("tbody tr td:nth-child(4)")
    texts = logs.all_inner_texts()
    assert len(texts) == 2 and texts[0].startswith("loading item") and texts[1].endswith("done")
    shot(page, "request")
    assert not page.errors, page.errors


def test_errors_view_and_group_page_keep_markup_as_text(page: Watched,
                                                        server: DashboardServer) -> None:
    """Errors -> group page: the injected path and message are shown literally, nothing runs."""
    p = page.page
    p.goto(server.url + "#/errors")
    row = p.locator("#page tbody tr", has_text="ValueError")
    expect(row).to_be_visible(timeout=15_000)
    expect(row).to_contain_text(MESSAGE)
    expect(row.locator("svg.spark")).to_be_attached()
    shot(page, "errors")
    row.locator("a.group-link").click()
    expect(p.locator("#page .page-title")).to_have_text("ValueError: " + MESSAGE, timeout=15_000)
    expect(p.locator("#page .traceback li.in-app").last).to_contain_text("in store.<locals>.order")
    expect(p.locator("#page .traceback li.library").first).to_be_attached()
    occurrence = p.locator("#page section", has_text="Recent occurrences").locator(
        "a.request-link").first
    occurrence.click()
    expect(p.locator("#page .page-title")).to_have_text(
        re.compile(re.escape("GET /orders/" + INJECTED)), timeout=15_000)
    expect(p.locator("#page a.group-link")).to_contain_text("ValueError")
    shot(page, "error-request")
    assert p.locator("img[src=x]").count() == 0
    assert p.locator("#overview").is_hidden()
    assert not page.errors, page.errors
