"""The overview's Background tasks card in a real browser (Playwright over Debian's Chromium).

The data is real: Celery tasks applied in process (Celery's own machinery and signals, the
kit's receivers) into a SQLite file the dashboard then serves. One task's name is markup.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests
from celery import Celery
from playwright.sync_api import Browser, expect

import instrument
from instrument.celery import instrument_celery
from instrument.dashboard.server import DashboardServer
from tests.dashboard_fixtures import TOKEN, running_server
from tests.test_dashboard_browser import Watched
from tests.test_dashboard_browser import browser as browser  # the module's Chromium
from tests.test_dashboard_pages import _watch, inert, shot, title

MARKUP = "<img src=x onerror=window.__xss=3>"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardServer]:
    db = tmp_path_factory.mktemp("tasks") / "metrics.db"
    instrument.configure(metrics_db=str(db), flush_interval=0.2)
    app = Celery("dash_tasks", broker="memory://")  # applied in process: no broker used

    @app.task(name="shop.send_invoice")
    def send_invoice(n: int) -> int:
        return n

    @app.task(name=MARKUP)
    def odd() -> None:
        raise ValueError("no")

    instrument_celery(app)
    for n in range(7):
        send_invoice.apply((n,))
    for _ in range(2):
        assert odd.apply().failed()
    instrument.shutdown()
    with running_server(db) as (srv, _):
        yield srv


def test_the_overview_lists_tasks_with_their_outcomes_and_links_to_a_task_page(
        browser: Browser, server: DashboardServer) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    w = _watch(Watched(context.new_page()), server)
    try:
        p = w.page
        p.goto(server.url + "#range=1h")
        card = p.locator("#tasks")
        expect(card).to_be_visible(timeout=15_000)
        rows = card.locator("tbody tr")
        expect(rows).to_have_count(2)
        cells = [r.locator("td").all_inner_texts() for r in rows.all()]
        by_task = {c[0]: c for c in cells}
        assert by_task["shop.send_invoice"][1:3] == ["success", "7"]
        assert by_task[MARKUP][1:3] == ["failure", "2"]  # the name shown as text
        assert by_task["shop.send_invoice"][5] == "\u2013"  # an en dash: never queued, no wait
        inert(w)
        shot(w, "tasks")
        card.locator("a.route-link", has_text="shop.send_invoice").click()
        expect(title(p)).to_have_text(re.compile(r"shop\.send_invoice"), timeout=15_000)
        assert "kind=task" in p.url
        expect(p.locator("#page [data-stat=requests]")).to_have_text("7")
        assert not w.errors, w.errors
    finally:
        context.close()


def test_the_routes_api_answers_for_tasks_and_refuses_an_unknown_kind(
        server: DashboardServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    root = server.url[: -len("/monitoring")] + "/api/v1/monitoring/routes"
    got = requests.get(root, params={"kind": "task", "hours": 1}, headers=auth, timeout=10)
    assert got.status_code == 200
    assert sorted((r["route"], r["method"], r["requests"]) for r in got.json()["routes"]) == [
        (MARKUP, "failure", 2), ("shop.send_invoice", "success", 7)]
    bad = requests.get(root, params={"kind": "job"}, headers=auth, timeout=10)
    assert bad.status_code == 400 and "kind" in bad.text
