"""Markup in stored text stays text on the dashboard page, checked in a real browser.

Route names come from request paths and log lines from anywhere, so both can
hold HTML and script. The page (Debian's Chromium driven by Playwright) shows
them literally: the text reads back unchanged, no element is created from it,
and nothing runs (the payloads would set ``window.__xss``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from instrument.backends.sqlite import SQLiteBackend
from instrument.core.aggregate import Aggregator
from tests.dashboard_fixtures import TOKEN, XSS_ROUTE, populate, running_server
from tests.reliability.harness import FIGURES

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
MESSAGE = '<img src=x onerror="window.__xss=4"><script>window.__xss=5</script>&amp; "quoted"'
LOGGER = '<b onmouseover="window.__xss=6">app</b>'
EXCEPTION = "Traceback <svg onload=window.__xss=7>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def test_markup_in_log_lines_is_inert(browser: Browser, tmp_path: Path) -> None:
    """Log messages, logger names and exceptions holding markup render as literal text.

    (Route names with markup in the route tables: ``tests/test_dashboard_browser.py``.)
    """
    db = tmp_path / "metrics.db"
    populate(db, recent_minutes=30)
    now = time.time()
    samples: list[Any] = [("log", now - 30 - i, 40, "ERROR", LOGGER, MESSAGE, EXCEPTION, None,
                           "req-xss", XSS_ROUTE, "GET") for i in range(3)]
    backend = SQLiteBackend(str(db))
    backend.write(Aggregator().aggregate(samples))
    backend.close()
    with running_server(db) as (server, _):
        context = browser.new_context()
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        r = context.request.post(server.url + "/login", form={"token": TOKEN}, max_redirects=0)
        assert r.status == 303
        page.goto(server.url + "#range=1h")
        expect(page.locator("#logs-table tbody tr").first).to_be_visible(timeout=15_000)
        rows = page.locator("#logs-table tbody tr")
        texts = [rows.nth(i).inner_text() for i in range(rows.count())]
        hit = [t for t in texts if "req-xss" in t]
        assert hit, texts
        assert MESSAGE in hit[0] and LOGGER in hit[0] and EXCEPTION in hit[0]
        assert page.locator("#logs-table img, #logs-table script, #logs-table b,"
                            " #logs-table svg").count() == 0
        assert page.evaluate("window.__xss") is None
        page.locator("#logs-table tbody tr").first.hover()
        assert page.evaluate("window.__xss") is None
        assert errors == []
        context.close()
    FIGURES["markup payloads checked in the browser"] += 3
