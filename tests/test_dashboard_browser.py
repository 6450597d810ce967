"""The dashboard page in a real browser: Playwright driving Debian's Chromium (headless)."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from instrument.backends.sqlite import SQLiteBackend
from instrument.core.aggregate import Aggregator
from instrument.dashboard.server import DashboardServer
from tests.dashboard_fixtures import (
    TOKEN,
    XSS_ROUTE,
    Populated,
    fire_alert,
    populate,
    running_server,
)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Populated:
    return populate(tmp_path_factory.mktemp("browser") / "metrics.db")


@pytest.fixture(scope="module")
def alerts_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("browser-alerts") / "alerts.db"
    fire_alert(path, description='Error rate <b>high</b> <img src=x onerror="window.__xss=3">')
    return path


@pytest.fixture(scope="module")
def server(data: Populated, alerts_db: Path) -> Iterator[DashboardServer]:
    with running_server(data.db, alerts_db=alerts_db) as (srv, _):
        yield srv


class Watched:
    """A page plus every console error and uncaught exception it produced."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text}")


@pytest.fixture
def page(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    watched = Watched(context.new_page())
    yield watched
    context.close()


def sign_in(w: Watched, server: DashboardServer, range_: str = "6h") -> None:
    """Sign in through the login endpoint (the browser keeps the cookie), then open the page."""
    r = w.page.context.request.post(server.url + "/login", form={"token": TOKEN},
                                    max_redirects=0)
    assert r.status == 303
    w.page.goto(server.url + f"#range={range_}")
    loaded(w)


def loaded(w: Watched) -> None:
    # Waits use locators: string predicates would need eval, which the page's CSP forbids.
    expect(w.page.locator("#updated")).to_have_text(re.compile("^updated"), timeout=15_000)


def chart_points(w: Watched, chart: str) -> int:
    value = w.page.get_attribute(f"#{chart} svg", "data-points")
    return int(value or 0)


def test_unauthenticated_visitor_is_refused(page: Watched, server: DashboardServer) -> None:
    """Without the token the page is a login form and the API answers 401; the form signs in."""
    response = page.page.goto(server.url)
    assert response is not None and response.status == 401
    assert page.page.locator("#token").is_visible()
    assert page.page.locator("#kpis").count() == 0
    api = page.page.request.get(server.url.replace("/monitoring", "/api/v1/monitoring/routes"))
    assert api.status == 401
    page.page.fill("#token", "wrong-token")
    page.page.click("button[type=submit]")
    expect(page.page.locator(".error")).to_have_text("That token is not right.")
    assert page.page.locator("#kpis").count() == 0
    page.page.fill("#token", TOKEN)
    page.page.click("button[type=submit]")
    loaded(page)
    assert page.page.url.startswith(server.url)
    assert page.page.locator("#logout").is_visible()
    assert all("401" in e for e in page.errors), page.errors  # only the refusals themselves


def test_page_loads_without_errors_and_charts_have_points(page: Watched,
                                                         server: DashboardServer) -> None:
    """After signing in, every chart has data points, tables fill, and the console stays clean."""
    sign_in(page, server, "6h")
    for chart in ("chart-rate", "chart-errors", "chart-latency", "chart-cpu", "chart-memory",
                  "chart-disk", "chart-network"):
        assert chart_points(page, chart) > 5, chart
    latency = page.page.locator("#chart-latency path.series")
    assert latency.count() == 3  # p50, p95, p99
    assert page.page.inner_text("[data-kpi=requests]") not in ("\u2013", "0")
    assert page.page.locator("#routes-slow tbody tr").first.inner_text().startswith("/search")
    assert page.page.inner_text("#health").startswith("health:")
    assert page.errors == []


def test_tiles_show_the_change_against_the_previous_period(page: Watched,
                                                          server: DashboardServer) -> None:
    """With an hour of traffic before the last one, each tile says how it changed against it.

    The data spans three hours, so over 6 hours there is nothing earlier to compare with.
    """
    sign_in(page, server, "1h")
    summary = page.page.request.get(server.url.replace("/monitoring", "/api/v1/monitoring/"
                                                       "metrics/summary?hours=1")).json()
    change = summary["change"]["requests"]
    assert summary["previous"]["requests"]["requests"] > 0 and change is not None
    text = page.page.inner_text("[data-delta=requests]")
    assert re.fullmatch(r"[+\-±]\d+(\.\d)? % vs previous hour", text), text
    assert text.startswith("+" if change > 0 else "-" if change < 0 else "±")
    assert page.page.inner_text("[data-delta=p95_ms]").endswith(" % vs previous hour")
    assert page.page.locator(".kpi .delta *").count() == 0  # text only, no markup
    with page.page.expect_response(lambda r: "metrics/summary" in r.url and "hours=6" in r.url):
        page.page.select_option("#range", "6h")
    expect(page.page.locator("[data-delta=requests]")).to_have_text("no previous data")
    assert page.errors == []


def test_time_range_changes_the_data(page: Watched, server: DashboardServer) -> None:
    """Switching from 15 minutes to 7 days changes the totals, the step and the routes shown."""
    sign_in(page, server, "15m")
    short = page.page.inner_text("[data-kpi=requests]")
    short_points = chart_points(page, "chart-rate")
    with page.page.expect_response(lambda r: "metrics/summary" in r.url and "hours=168" in r.url):
        page.page.select_option("#range", "7d")
    expect(page.page.locator("[data-kpi=requests]")).not_to_have_text(short)
    long = page.page.inner_text("[data-kpi=requests]")
    assert long != short
    assert chart_points(page, "chart-rate") != short_points
    assert "#range=7d" in page.page.url
    assert page.errors == []


def test_alert_text_with_markup_stays_inert(page: Watched, server: DashboardServer) -> None:
    """An alert description holding HTML renders as literal text and runs nothing."""
    sign_in(page, server, "24h")
    description = page.page.locator("#alerts-active tbody td").nth(2).inner_text()
    assert description == 'Error rate <b>high</b> <img src=x onerror="window.__xss=3">'
    assert page.page.evaluate("window.__xss") is None
    assert page.page.locator("#alerts-active img, #alerts-active b").count() == 0
    assert page.errors == []


def test_auto_refresh_fetches_again(page: Watched, server: DashboardServer) -> None:
    """With auto-refresh at 5 s the page fetches fresh data by itself, without a click."""
    sign_in(page, server, "15m")
    page.page.select_option("#refresh", "0")
    before = page.page.inner_text("#updated")
    with page.page.expect_response(lambda r: "metrics/summary" in r.url, timeout=9_000):
        page.page.select_option("#refresh", "5")  # selecting only schedules; the timer fetches
    expect(page.page.locator("#updated")).not_to_have_text(before, timeout=9_000)
    assert page.errors == []


def test_xss_route_in_table_is_text(browser: Browser, tmp_path: Path) -> None:
    """When the XSS-named route is the slowest, its cell holds the literal text and nothing runs."""
    db = tmp_path / "xss.db"
    offset = time.time() - time.perf_counter()
    t0 = time.time() - 120 - offset
    samples: list[Any] = [("http", t0 + i, t0 + i + 2.0, 0.0, XSS_ROUTE, "GET", 200, 0, 10, None,
                           False) for i in range(5)]
    backend = SQLiteBackend(str(db))
    backend.write(Aggregator().aggregate(samples))
    backend.close()
    with running_server(db, token=None, public=True) as (srv, _):
        context = browser.new_context()
        w = Watched(context.new_page())
        w.page.goto(srv.url + "#range=15m")
        loaded(w)
        cell = w.page.locator("#routes-slow td.route").first
        assert cell.inner_text() == XSS_ROUTE
        assert w.page.evaluate("window.__xss") is None
        assert w.page.locator("#routes-slow img, #routes-slow script").count() == 0
        assert w.errors == []
        context.close()


def test_acknowledging_an_alert_changes_its_state(page: Watched, server: DashboardServer,
                                                  alerts_db: Path) -> None:
    """Clicking Acknowledge records it through the alert manager and the row shows the new state."""
    sign_in(page, server, "1h")
    row = page.page.locator("#alerts-active tbody tr").first
    assert row.locator(".state").inner_text() == "firing"
    with page.page.expect_response(lambda r: "/acknowledge" in r.url) as info:
        row.locator("button.ack").click()
    assert info.value.status == 200
    expect(row.locator(".state")).to_have_text("acknowledged by dashboard")
    assert page.page.locator("#alerts-active button.ack").count() == 0
    conn = sqlite3.connect(str(alerts_db))
    acked = conn.execute("SELECT acknowledged_by FROM alerts").fetchone()[0]
    conn.close()
    assert acked == "dashboard"
    assert page.errors == []


def test_phone_width_and_screenshot(browser: Browser, server: DashboardServer) -> None:
    """At 390 px the page has no horizontal overflow; screenshots are kept as artifacts."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1)
    w = Watched(context.new_page())
    sign_in(w, server, "6h")
    overflow = w.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    ARTIFACTS.mkdir(exist_ok=True)
    w.page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    context.close()
    wide = browser.new_context(viewport={"width": 1280, "height": 900})
    w = Watched(wide.new_page())
    sign_in(w, server, "1h")
    w.page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    readme_copy = REPO / "docs" / "dashboard.png"
    if not readme_copy.exists() or os.environ.get("UPDATE_DASHBOARD_SCREENSHOT"):
        readme_copy.parent.mkdir(exist_ok=True)  # refreshed on request only: no churn in git
        shutil.copyfile(ARTIFACTS / "dashboard.png", readme_copy)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 20_000
    assert w.errors == []
    wide.close()


# Every panel of every panel grid (the totals tiles and the chart/table sections), grouped by
# row: a row's panels plus the gaps between them must span the grid's whole content width.
_ROWS_JS = """() => {
  const out = [];
  for (const grid of document.querySelectorAll("main .kpis, main section.grid")) {
    if (!grid.getClientRects().length) continue;
    const style = getComputedStyle(grid);
    const box = grid.getBoundingClientRect();
    const width = box.width - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)
      - parseFloat(style.borderLeftWidth) - parseFloat(style.borderRightWidth);
    const gap = parseFloat(style.columnGap) || 0;
    const rows = new Map();
    for (const panel of grid.children) {
      const r = panel.getBoundingClientRect();
      if (!r.width || !r.height) continue;
      const top = Math.round(r.top);
      if (!rows.has(top)) rows.set(top, []);
      rows.get(top).push({left: r.left, width: r.width});
    }
    const name = grid.id || grid.getAttribute("aria-label")
      || grid.querySelector("h2").textContent;  // a section is named by its first panel
    for (const [top, panels] of rows) {
      const used = panels.reduce((sum, p) => sum + p.width, 0) + gap * (panels.length - 1);
      out.push({grid: name, top: top, panels: panels.length, used: used, width: width});
    }
  }
  return out;
}"""


@pytest.mark.parametrize("width", [1024, 1400, 1920])
def test_panel_grid_rows_have_no_holes(browser: Browser, server: DashboardServer, tmp_path: Path,
                                       width: int,
                                       record_property: Callable[[str, object], None]) -> None:
    """At 1024, 1400 and 1920 px every row of panels fills its grid's width: no empty cells."""
    context = browser.new_context(viewport={"width": width, "height": 1000},
                                  device_scale_factor=1)
    w = Watched(context.new_page())
    try:
        sign_in(w, server, "1h")
        shot = tmp_path / f"dashboard-{width}.png"
        w.page.screenshot(path=str(shot), full_page=True)
        record_property(f"screenshot_{width}", str(shot))  # kept in tmp_path and the report
        print(f"screenshot: {shot}")
        rows = w.page.evaluate(_ROWS_JS)
        assert len({r["grid"] for r in rows}) == 4, rows  # totals, charts, routes, system
        short = [r for r in rows if abs(r["used"] - r["width"]) > 2]
        assert short == [], f"rows with a hole at {width} px (screenshot {shot}): {short}"
        assert w.errors == []
    finally:
        context.close()
