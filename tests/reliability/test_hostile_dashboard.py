"""The dashboard against hostile callers: bad parameters, broken searches, no or forged tokens.

Calls go to :class:`instrument.dashboard.Dashboard` itself (the pure request ->
response function every mount shares) over a populated store and a real alert.
Parameters: SQL injection, huge and negative windows and steps, NaN, repeated
and malformed query strings; the answer is a 200 or a 400 that says what is
wrong, never a 500, and the store is byte for byte unchanged. Without the
token, every route refuses and nothing from the store leaks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instrument.dashboard import API_PREFIX, PAGE, Dashboard
from instrument.dashboard._http import Request, Response
from tests.dashboard_fixtures import TOKEN, fire_alert, populate
from tests.reliability.harness import FIGURES, QUIET

GET_ENDPOINTS = ("health", "metrics/summary", "metrics/timeseries", "metrics/system", "routes",
                 "alerts", "logs", "openapi.json")
PARAMS = ("hours", "from", "to", "step", "metric", "route", "method", "kind", "sort", "limit",
          "top", "before_id", "q", "level", "logger", "request_id", "token", "x")
HOSTILE = ["' OR 1=1 --", "'; DROP TABLE api_metrics; --", '" OR ""="', "1; DELETE FROM logs",
           "-1", "-60", "0", "1e308", "-1e308", "nan", "inf", "9" * 40, "1.5", "61", "86400000",
           "2024-13-45T99:99:99", "1970-01-01", "0001-01-01T00:00:00", "9999-12-31", "\x00",
           "\u202e", "%", "*", "\"", "AND", "NEAR(", "a:b", "^", "-", "(", "requests,nope",
           ",".join(["requests"] * 50), "x" * 10_000, "<script>alert(1)</script>", "..", ""]
FTS_ERRORS = ['"unterminated', "AND", "foo AND", "NOT", "(", ")", "a:b:c", "NEAR(a b", "*",
              "^", "-", "a OR", "col:foo", "{a b}:c", "+"]
DATA_MARKERS = ("/search", "/items/{id}", "/boom", "checkout_errors", "payment failed",
                "slow query", "jobs.fetch")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hostile-dashboard")
    populate(root / "metrics.db")
    fire_alert(root / "alerts.db")
    return root / "metrics.db", root / "alerts.db"


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()


def call(dashboard: Dashboard, method: str, path: str, query: str = "",
         headers: dict[str, str] | None = None, body: bytes = b"") -> Response:
    return dashboard(Request(method, path, query, headers or {}, body))


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def check_answer(r: Response) -> None:
    """A 200 with JSON, or a 400 whose JSON message says what to fix; never a 5xx."""
    assert r.status in (200, 400), (r.status, r.body[:300])
    payload = json.loads(r.body)
    if r.status == 400:
        assert payload["message"] and "Traceback" not in payload["message"]


@settings(QUIET, max_examples=700)
@given(endpoint=st.sampled_from(GET_ENDPOINTS),
       params=st.dictionaries(st.sampled_from(PARAMS), st.sampled_from(HOSTILE) | st.text(
           max_size=30) | st.integers().map(str) | st.floats().map(str), max_size=5),
       raw=st.none() | st.text(st.characters(max_codepoint=255), max_size=60))
def test_api_parameters_give_200_or_400(store: tuple[Path, Path], endpoint: str,
                                        params: dict[str, str], raw: str | None) -> None:
    """Any parameters on any endpoint: 200 or a 400 naming the problem; the store is unchanged."""
    dashboard = Dashboard(str(store[0]), alerts_db=str(store[1]), token=TOKEN)
    before = digest(*store)
    try:
        query = raw if raw is not None else urlencode(params, quote_via=quote)
        check_answer(call(dashboard, "GET", f"{API_PREFIX}/{endpoint}", query, bearer()))
    finally:
        dashboard.close()
    assert digest(*store) == before
    FIGURES["bad inputs tried: dashboard API parameters"] += 1


@pytest.mark.parametrize(("endpoint", "query"), [
    ("metrics/timeseries", "step=-60"), ("metrics/timeseries", "step=0"),
    ("metrics/timeseries", "step=61"), ("metrics/system", "step=-3600"),
    ("metrics/timeseries", "from=946684800&to=7258118400"),
    ("metrics/timeseries", "from=2000&to=1000"), ("metrics/summary", "hours=1e308"),
    ("metrics/summary", "hours=-5"), ("metrics/summary", "hours=nan"), ("routes", "limit=-1"),
    ("routes", "hours=1&from=1700000000"), ("routes", "sort=1;DROP TABLE x"),
    ("logs", "before_id=-1"), ("logs", "limit=100000"), ("logs", "level=LOUD"),
    ("metrics/timeseries", "metric=requests&metric=errors"), ("metrics/timeseries", "step=60&"
                                                              "from=1000000000&to=1700000000"),
])
def test_bad_windows_and_steps_are_400(store: tuple[Path, Path], endpoint: str,
                                       query: str) -> None:
    """Negative or zero steps, inverted, huge or NaN windows, repeats: 400 with a message."""
    dashboard = Dashboard(str(store[0]), alerts_db=str(store[1]), token=TOKEN)
    try:
        r = call(dashboard, "GET", f"{API_PREFIX}/{endpoint}", query, bearer())
    finally:
        dashboard.close()
    assert r.status == 400, r.body
    assert json.loads(r.body)["message"]
    FIGURES["bad inputs tried: dashboard API parameters"] += 1


@pytest.mark.parametrize("text", FTS_ERRORS)
def test_log_search_syntax_errors_are_400(store: tuple[Path, Path], text: str) -> None:
    """Full-text queries SQLite cannot parse are a 400 naming the search, not a 500."""
    dashboard = Dashboard(str(store[0]), token=TOKEN)
    try:
        r = call(dashboard, "GET", f"{API_PREFIX}/logs", urlencode({"q": text}), bearer())
    finally:
        dashboard.close()
    assert r.status == 400, r.body
    assert "Cannot parse search text" in json.loads(r.body)["message"]
    FIGURES["bad inputs tried: log searches"] += 1


@settings(QUIET, max_examples=300)
@given(text=st.text(max_size=40) | st.sampled_from([*FTS_ERRORS, '""', "a*", '"a b"']))
def test_any_log_search_is_200_or_400(store: tuple[Path, Path], text: str) -> None:
    """Any search text: results or a 400, and the store unchanged."""
    dashboard = Dashboard(str(store[0]), token=TOKEN)
    before = digest(store[0])
    try:
        check_answer(call(dashboard, "GET", f"{API_PREFIX}/logs", urlencode({"q": text}),
                          bearer()))
    finally:
        dashboard.close()
    assert digest(store[0]) == before
    FIGURES["bad inputs tried: log searches"] += 1


ROUTES = [("GET", PAGE), ("GET", PAGE + "/"), ("HEAD", PAGE), ("POST", PAGE),
          ("GET", PAGE + "/login?token=wrong-token-0000000000"), ("POST", PAGE + "/logout"),
          ("GET", PAGE + "/nope"), ("GET", API_PREFIX), ("GET", API_PREFIX + "/nope"),
          ("POST", API_PREFIX + "/alerts/x/acknowledge"), ("DELETE", API_PREFIX + "/routes")] + \
    [("GET", f"{API_PREFIX}/{e}") for e in GET_ENDPOINTS] + \
    [("HEAD", f"{API_PREFIX}/{e}") for e in GET_ENDPOINTS]
CREDENTIALS = {
    "none": {},
    "wrong bearer": bearer("wrong-token-0123456789abcdef"),
    "token prefix": bearer(TOKEN[:-1]),
    "token plus one": bearer(TOKEN + "x"),
    "other scheme": {"authorization": f"Basic {TOKEN}"},
    "empty bearer": {"authorization": "Bearer "},
    "forged cookie": {"cookie": "instrument_session=9999999999.00ff"},
    "cookie of another token": {"cookie": "instrument_session=9999999999." + "a" * 64},
    "token as cookie": {"cookie": f"instrument_session={TOKEN}"},
    "token in header": {"x-instrument-token": TOKEN},
}


@pytest.mark.parametrize("credentials", sorted(CREDENTIALS))
def test_every_route_refuses_without_the_token(store: tuple[Path, Path], credentials: str) -> None:
    """Every route refuses (401/403/404/405) and shows no stored data without the token."""
    dashboard = Dashboard(str(store[0]), alerts_db=str(store[1]), token=TOKEN)
    try:
        for method, target in ROUTES:
            path, _, query = target.partition("?")
            r = call(dashboard, method, path, query, CREDENTIALS[credentials])
            text = r.body.decode("utf-8", "replace")
            assert not any(marker in text for marker in DATA_MARKERS), (method, target, text)
            assert not any(v.startswith("instrument_session=") and "Max-Age=0" not in v
                           for k, v in r.headers if k == "Set-Cookie"), (method, target)
            if path == f"{API_PREFIX}/health" and r.status in (200, 503):
                assert set(json.loads(r.body or b"{}")) <= {"status"}  # the verdict only
            elif path == PAGE + "/login" or (method == "HEAD" and r.status == 200):
                assert r.status in (200, 401, 429) and b"instrument_session" not in r.body
            else:
                assert r.status in (401, 403, 404, 405), (method, target, r.status)
            FIGURES["unauthenticated requests refused"] += 1
        for asset in ("app.js", "app.css", "favicon.svg"):  # public: the login form needs them
            r = call(dashboard, "GET", f"{PAGE}/static/{asset}", "", CREDENTIALS[credentials])
            assert r.status == 200 and not any(m.encode() in r.body for m in DATA_MARKERS)
    finally:
        dashboard.close()


def test_dashboard_off_answers_404_everywhere(store: tuple[Path, Path]) -> None:
    """With no token and public access off, every route is a 404, even with a bearer.

    The one exception is the status-only health check (issue 17): it answers GET with
    the verdict and nothing else (GET and HEAD), unless health_public is off too.
    """
    dashboard = Dashboard(str(store[0]), alerts_db=str(store[1]), token=None, public=False)
    closed = Dashboard(str(store[0]), alerts_db=str(store[1]), token=None, public=False,
                       health_public=False)
    try:
        for method, target in ROUTES:
            path, _, query = target.partition("?")
            for headers in ({}, bearer()):
                assert call(closed, method, path, query, headers).status == 404
                answer = call(dashboard, method, path, query, headers)
                if path == "/api/v1/monitoring/health" and method in ("GET", "HEAD"):
                    assert answer.status == 200
                    assert json.loads(answer.body) == {"status": "ok"}
                else:
                    assert answer.status == 404, (method, target)
    finally:
        dashboard.close()
        closed.close()
        closed.close()
