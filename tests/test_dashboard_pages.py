"""The route, request and error pages in a real browser (Playwright over Debian's Chromium).

The data is real: a Flask app behind the kit, served by werkzeug, with the profiler on
and JSON logs stored; the dashboard then serves that SQLite file. A route sleeps 200 ms
in ``slow_part`` on every tenth request and logs twice per request; another raises an
exception whose message carries markup, at a path that carries markup; a catch-all answers
503 to a path that is an HTML tag.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests
from flask import Flask
from playwright.sync_api import Browser, Page, Request, expect

import instrument
from instrument.dashboard.server import DashboardServer
from instrument.logs import setup_logging
from tests.dashboard_fixtures import TOKEN, running_server
from tests.servers import query, werkzeug_server
from tests.test_dashboard_browser import ARTIFACTS, Watched
from tests.test_dashboard_browser import browser as browser  # the module's Chromium

ITEMS = "/items/<int:n>"
ORDERS = "/orders/<path:ref>"
CATCH_ALL = "/<path:rest>"
INJECTED = "<img src=x onerror=window.__xss=1>"   # in the failing route's path
RAW_PATH = "/<img src=x onerror=alert(1)>"        # a whole path that is a tag (the catch-all)
MESSAGE = "<script>window.__xss=2</script> bad order"
SLOW = {f"item-{n}" for n in (10, 20, 30, 40)}


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

    @app.get("/<path:rest>")
    def anything(rest: str) -> tuple[str, int]:
        return "nothing here", 503

    from instrument.flask import Instrument

    # Flask's first request (lazy imports, the URL map) once, before the kit sees any: in a
    # fresh virtualenv it took longer than the 200 ms ones and was listed among the slowest.
    assert app.test_client().get("/warm-up").status_code == 503
    Instrument(app)
    with werkzeug_server(app) as url, requests.Session() as s:
        for n in range(1, 41):
            r = s.get(f"{url}/items/{n}", headers={"X-Request-ID": f"item-{n}"}, timeout=10)
            assert r.status_code == 200
        for i in range(3):
            r = s.get(f"{url}/orders/{INJECTED}", headers={"X-Request-ID": f"order-{i}"},
                      timeout=10)
            assert r.status_code == 500
        r = s.get(url + RAW_PATH, headers={"X-Request-ID": "raw-path"}, timeout=10)
        assert r.status_code == 503
    instrument.shutdown()
    logging.getLogger("pagesapp").handlers.clear()
    yield db


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[DashboardServer]:
    with running_server(store) as (srv, _):
        yield srv


def _watch(w: Watched, server: DashboardServer) -> Watched:
    r = w.page.context.request.post(server.url + "/login", form={"token": TOKEN},
                                    max_redirects=0)
    assert r.status == 303
    w.page.on("dialog", lambda d: (w.errors.append(f"dialog: {d.message}"), d.dismiss()))
    return w


@pytest.fixture
def page(server: DashboardServer, browser: Browser) -> Iterator[Watched]:
    # ``server`` first: the store's load then runs before Chromium starts. Launched first, the
    # browser's start-up competed with it for the two cores, and a full run once saw a fast
    # request take longer than the 200 ms ones.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield _watch(Watched(context.new_page()), server)
    context.close()


def shot(w: Watched, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    w.page.screenshot(path=str(ARTIFACTS / f"pages-{name}.png"), full_page=True)


def title(p: Page) -> Any:
    return p.locator("#page .page-title")


def card(p: Page, heading: str) -> Any:
    return p.locator("#page section.card").filter(
        has=p.locator("h2", has_text=re.compile("^" + re.escape(heading))))


def inert(w: Watched) -> None:
    """Nothing injected ran: no flag set, no dialog, no element made from the data."""
    assert w.page.evaluate("window.__xss") is None
    assert w.page.locator("#page img, #page script, #overview img").count() == 0
    assert not [e for e in w.errors if e.startswith("dialog")], w.errors


def api_span(request: Request) -> int:
    q = parse_qs(urlsplit(request.url).query)
    return int(q["to"][0]) - int(q["from"][0])


# -- route and request pages ----------------------------------------------------------------
def test_route_page_from_the_overview_lists_its_slowest_and_leads_to_their_logs(
        page: Watched, server: DashboardServer, store: Path) -> None:
    """Overview -> route page (its slowest are the 200 ms ones) -> request page, logs in order;
    back returns to the route page, then to the overview."""
    kept = {rid for (rid,) in query(store, "SELECT request_id FROM request_exemplars WHERE"
                                           " route = ? AND duration_ms > 150", ITEMS)}
    assert kept == SLOW, query(store, "SELECT request_id, duration_ms FROM request_exemplars"
                                      " WHERE route = ? ORDER BY duration_ms DESC", ITEMS)
    p = page.page
    p.goto(server.url + "#range=1h")
    link = p.locator("#routes-slow a.route-link", has_text=ITEMS)
    expect(link).to_be_visible(timeout=15_000)
    with p.expect_request(lambda r: "/api/v1/monitoring/routes/" in r.url) as asked:
        link.click()
    assert api_span(asked.value) == 3600
    expect(title(p)).to_have_text("GET " + ITEMS, timeout=15_000)
    assert p.url.endswith("#/routes/" + quote(ITEMS, safe="") + "?method=GET")
    assert p.locator("#overview").is_hidden()
    expect(p.locator("#page [data-stat=requests]")).to_have_text("40")
    expect(p.locator("#page [data-stat=p99_ms]")).to_have_text(re.compile(r"^2\d\d ms$"))
    assert int(p.get_attribute("#route-rate svg", "data-points") or 0) > 0
    assert p.locator("#route-latency path.series").count() == 3

    slowest = card(p, "Slowest requests")
    ids = slowest.locator("a.request-link").all_inner_texts()
    assert set(ids[:4]) == SLOW and len(ids) > 4  # the four 200 ms ones first, then the next
    durations = [float(t.split()[0]) for t in
                 slowest.locator("tbody td:nth-child(3)").all_inner_texts()]
    assert durations == sorted(durations, reverse=True) and durations[3] >= 150

    # The histogram has a bar for the bulk and one for the 200 ms tail, empty doublings between.
    bars = p.locator("#page .histogram rect.bar")
    counts = {float(b.get_attribute("data-le") or 0): int(b.get_attribute("data-count") or 0)
              for b in bars.all()}
    assert counts[256.0] == 4 and sum(counts.values()) == 40
    assert p.locator("#page .histogram .axis text", has_text="64 ms").count() == 1

    # The flame graph: slow_part holds most of the route's samples.
    frames = p.locator("#page .flame g.frame")
    expect(frames.first).to_be_attached()
    total = int(p.get_attribute("#page .flame svg", "data-samples") or 0)
    part = p.locator("#page .flame g.frame[data-frame$=':slow_part']").first
    share = part.locator("title").text_content() or ""
    assert "slow_part" in share and total > 50, share
    samples = int(re.search(r"— (\d+) samples", share).group(1))  # type: ignore[union-attr]
    assert samples / total > 0.5, share
    shot(page, "route")
    part.click()  # zoom into it: it becomes full width
    expect(card(p, "Where the time goes")).to_contain_text("Zoomed into")
    width = float(part.locator("rect").get_attribute("width") or 0)
    assert width >= float(p.locator("#page .flame svg").get_attribute("viewBox").split()[2]) - 1

    first = ids[0]
    slowest.locator("a.request-link", has_text=re.compile("^" + first + "$")).click()
    n = first.split("-")[1]
    expect(title(p)).to_have_text(f"GET /items/{n}", timeout=15_000)
    assert p.url.endswith("#/requests/" + first)
    fields = p.locator("#page dl.fields")
    expect(fields).to_contain_text(first)
    expect(fields).to_contain_text("one of the slowest")
    logs = card(p, "Log lines").locator("tbody td:nth-child(4)")
    assert logs.all_inner_texts() == [f"loading item {n}", f"item {n} done"]
    expect(p.locator("#page .page-sub a.route-link")).to_have_text(ITEMS)
    shot(page, "request")

    p.go_back()
    expect(title(p)).to_have_text("GET " + ITEMS, timeout=15_000)
    p.go_back()
    expect(p.locator("#overview")).to_be_visible(timeout=15_000)
    expect(p.locator("#page")).to_be_hidden()
    expect(p.locator("#routes-slow a.route-link").first).to_be_visible()
    assert page.errors == []


def test_the_range_applies_to_every_page(page: Watched, server: DashboardServer) -> None:
    """A page asks for the range shown; changing it asks again and keeps it in the link."""
    p = page.page
    route = "#/routes/" + quote(ITEMS, safe="") + "?method=GET&range=15m"
    with p.expect_request(lambda r: "/api/v1/monitoring/routes/" in r.url) as asked:
        p.goto(server.url + route)
    assert api_span(asked.value) == 900
    assert parse_qs(urlsplit(asked.value.url).query)["method"] == ["GET"]
    expect(title(p)).to_have_text("GET " + ITEMS, timeout=15_000)
    assert p.input_value("#range") == "15m"
    with p.expect_request(lambda r: "metrics/timeseries" in r.url and "route=" in r.url) as ts:
        p.select_option("#range", "6h")
    assert api_span(ts.value) == 21600 and parse_qs(urlsplit(ts.value.url).query)["route"] == [
        ITEMS]
    assert p.url.endswith("range=6h")
    with p.expect_request(lambda r: "/api/v1/monitoring/errors?" in r.url) as errors:
        p.click("#nav-errors")
    assert api_span(errors.value) == 21600
    expect(p.locator("#nav-errors")).to_have_attribute("aria-current", "page")
    expect(title(p)).to_have_text("Errors")
    assert page.errors == []


def test_injected_path_and_message_stay_text(page: Watched, server: DashboardServer) -> None:
    """A raw path that is a tag and an exception message with <script> are shown literally."""
    p = page.page
    p.goto(server.url + "#/routes/" + quote(ORDERS, safe="") + "?method=GET&range=1h")
    expect(title(p)).to_have_text("GET " + ORDERS, timeout=15_000)
    failing = card(p, "Failing requests")
    expect(failing.locator("td.route").first).to_have_text("/orders/" + INJECTED)
    expect(failing).to_contain_text("ValueError")
    expect(card(p, "Error groups").locator("td.message")).to_have_text(MESSAGE)
    inert(page)

    p.goto(server.url + "#/requests/raw-path")
    expect(title(p)).to_have_text("GET " + RAW_PATH, timeout=15_000)
    expect(p.locator("#page dl.fields")).to_contain_text(RAW_PATH)
    expect(p.locator("#page dl.fields")).to_contain_text("it failed")
    expect(p.locator("#page .page-sub a.route-link")).to_have_text(CATCH_ALL)
    inert(page)

    p.goto(server.url + "#/requests/order-1")
    expect(title(p)).to_have_text("GET /orders/" + INJECTED, timeout=15_000)
    expect(p.locator("#page .page-sub a.group-link")).to_have_text("ValueError: " + MESSAGE)
    inert(page)
    assert page.errors == []


def test_a_request_not_kept_and_a_route_not_seen_say_so(page: Watched,
                                                        server: DashboardServer) -> None:
    """A 404 from the API is a message on the page, not a broken one."""
    p = page.page
    p.goto(server.url + "#/requests/" + quote("nobody/here", safe=""))
    expect(title(p)).to_have_text("Request nobody/here", timeout=15_000)
    expect(p.locator("#page")).to_contain_text("This request was not kept")
    expect(p.locator("#error")).to_be_hidden()
    p.goto(server.url + "#/routes/" + quote("/never", safe="") + "?method=GET&range=15m")
    expect(title(p)).to_have_text("GET /never", timeout=15_000)
    expect(p.locator("#page")).to_contain_text("No request to this route in the last 15 minutes")
    p.goto(server.url + "#/errors/0123456789abcdef")
    expect(p.locator("#page")).to_contain_text("There is no error group 0123456789abcdef",
                                               timeout=15_000)
    # The browser reports each 404 answer itself; nothing else may reach the console.
    assert all("404" in e for e in page.errors), page.errors
    assert 1 <= len(page.errors) <= 3, page.errors


# -- errors ----------------------------------------------------------------------------------
def test_errors_view_and_group_page(page: Watched, server: DashboardServer,
                                    store: Path) -> None:
    """Header tab -> Errors (count, routes, sparkline) -> group page (traceback with the app's
    frames emphasised and library frames folded, occurrences) -> the request that raised it."""
    [(group_id,)] = query(store, "SELECT group_id FROM error_groups")
    p = page.page
    p.goto(server.url + "#range=1h")
    expect(p.locator("#updated")).to_have_text(re.compile("^updated"), timeout=15_000)
    p.click("#nav-errors")
    expect(title(p)).to_have_text("Errors", timeout=15_000)
    assert p.url.endswith("#/errors")
    row = p.locator("#page tbody tr", has_text="ValueError")
    expect(row).to_have_count(1)
    expect(row.locator("td.message")).to_have_text(MESSAGE)
    expect(row.locator("td").nth(2)).to_have_text("3")
    expect(row.locator("a.route-link")).to_have_text(ORDERS)
    points = row.locator("svg.spark polyline").get_attribute("points") or ""
    assert len(points.split()) >= 2
    inert(page)
    shot(page, "errors")

    row.locator("a.group-link").click()
    expect(title(p)).to_have_text("ValueError: " + MESSAGE, timeout=15_000)
    assert p.url.endswith("#/errors/" + group_id)
    expect(p.locator("#page [data-stat=count]")).to_have_text("3")
    tb = card(p, "Latest traceback")
    mine = tb.locator("li.in-app")
    expect(mine.last).to_contain_text("in store.<locals>.order")
    expect(mine.last.locator("code")).to_have_text("raise ValueError(MESSAGE)")
    library = tb.locator("details li.library").first
    expect(library).to_be_attached()
    expect(library).to_be_hidden()  # folded until asked for
    tb.locator("details summary").first.click()
    expect(library).to_be_visible()
    expect(library).to_contain_text("flask")
    occurrences = card(p, "Recent occurrences").locator("a.request-link")
    assert sorted(occurrences.all_inner_texts()) == ["order-0", "order-1", "order-2"]
    assert int(p.get_attribute("#page .chart svg", "data-points") or 0) >= 1
    inert(page)
    shot(page, "group")

    occurrences.first.click()
    expect(title(p)).to_have_text(re.compile("^GET /orders/"), timeout=15_000)
    expect(p.locator("#page dl.fields a.group-link")).to_contain_text("ValueError")
    inert(page)
    shot(page, "error-request")
    assert page.errors == []


def test_pages_fit_a_phone(browser: Browser, server: DashboardServer) -> None:
    """At 390 px the route and group pages have no horizontal overflow."""
    context = browser.new_context(viewport={"width": 390, "height": 844})
    w = _watch(Watched(context.new_page()), server)
    try:
        w.page.goto(server.url + "#/routes/" + quote(ITEMS, safe="") + "?method=GET&range=1h")
        expect(w.page.locator("#page .flame g.frame").first).to_be_attached(timeout=15_000)
        assert w.page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
        shot(w, "route-phone")
        w.page.click("#nav-errors")
        w.page.locator("#page a.group-link").first.click()
        expect(w.page.locator("#page .traceback").first).to_be_visible(timeout=15_000)
        assert w.page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
        assert w.errors == []
    finally:
        context.close()
