"""Django's test clients with the middleware, the mounted dashboard, and the settings dict.

Requests go through the real tests/django_site project (sync ``Client`` and
``AsyncClient``) and land in the real SQLite store of each test.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from django.test import AsyncClient, Client, override_settings

import instrument
import instrument.logs  # a reader of the request context: from now on ids are made current
from instrument.config import ConfigError
from instrument.core.runtime import runtime
from tests.django_env import migrate  # sets the project up (django.setup()) on import
from tests.servers import query, settled_count

TOKEN = "django-token-0123456789abcdef"
API = "/monitoring/api/v1/monitoring"
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def rows(db: Path) -> list[tuple[object, ...]]:
    instrument.flush()
    return query(db, "SELECT endpoint, method, status_code, exception FROM api_metrics"
                     " ORDER BY id")


def body(response: object) -> bytes:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)  # type: ignore[attr-defined]
    return response.content  # type: ignore[attr-defined, no-any-return]


def test_client_names_routes_and_keeps_real_statuses(db_path: Path) -> None:
    """Templates with includes and namespaces, re_path by its regex, 403/404/500, unmatched."""
    c = Client(raise_request_exception=False)
    for path in ("/articles/2024/", "/shop/items/3/", "/shop/catalog/", "/shop/sku/XYZ42/",
                 "/legacy/old/", "/blog/missing/", "/blog/forbidden/", "/blog/boom/",
                 "/blog/async/", "/no/such/page/"):
        response = c.get(path)
        body(response)
        assert response["X-Request-ID"]
    assert rows(db_path) == [
        ("/articles/<int:year>/", "GET", 200, None),
        ("/shop/items/<int:item_id>/", "GET", 200, None),
        ("/shop/catalog/", "GET", 200, None),
        ("/shop/sku/(?P<code>[A-Z]{3}\\d{2})/$", "GET", 200, None),
        ("/legacy/(?P<slug>[a-z]+)/$", "GET", 200, None),
        ("/blog/missing/", "GET", 404, None),
        ("/blog/forbidden/", "GET", 403, None),
        ("/blog/boom/", "GET", 500, "RuntimeError"),
        ("/blog/async/", "GET", 200, None),
        ("__unmatched__", "GET", 404, None),
    ]
    assert runtime.recorder.in_flight == 0  # every request begun has ended


def test_view_exception_reaches_the_test_client_unchanged(db_path: Path) -> None:
    """The default client re-raises the view's exception; the 500 is stored all the same."""
    with pytest.raises(RuntimeError, match="the view failed"):
        Client().get("/blog/boom/")
    assert rows(db_path) == [("/blog/boom/", "GET", 500, "RuntimeError")]


def test_async_client_runs_the_async_middleware(db_path: Path) -> None:
    """AsyncClient builds an async chain: async views and async streams are recorded too."""

    async def run() -> list[bytes]:
        c = AsyncClient()
        first = await c.get("/blog/async/")
        stream = await c.get("/blog/astream/3/")
        chunks = [part async for part in stream.streaming_content]  # type: ignore[attr-defined]
        return [first.content, b"".join(chunks), first["X-Request-ID"].encode()]

    content, streamed, rid = asyncio.run(run())
    assert content == b"async hello" and streamed.count(b"achunk") == 3 and rid
    assert settled_count(db_path, 2) == 2
    assert query(db_path, "SELECT endpoint, response_size_bytes FROM api_metrics ORDER BY id") \
        == [("/blog/async/", 11), ("/blog/astream/<int:n>/", len(streamed))]
    assert runtime.recorder.in_flight == 0


def test_upload_bytes_and_request_id_and_trace_context(db_path: Path) -> None:
    """Request bytes from Content-Length; X-Request-ID echoed; an incoming trace continued."""
    c = Client()
    sent = c.post("/blog/upload/", data=b"z" * 321, content_type="application/octet-stream",
                  headers={"X-Request-ID": "abc-123"})
    assert sent.content == b"got 321" and sent["X-Request-ID"] == "abc-123"
    assert "traceparent" not in sent  # a trace this request started is not announced
    traced = c.get("/blog/whoami/", headers={"traceparent": TP})
    rid, tp = traced.content.decode().split()
    assert rid == TP[3:35] == traced["X-Request-ID"]  # the trace id serves as request id
    assert tp == traced["traceparent"] and tp[:35] == TP[:35] and tp[36:52] != TP[36:52]
    instrument.flush()
    assert query(db_path, "SELECT endpoint, request_size_bytes FROM api_metrics ORDER BY id") \
        == [("/blog/upload/", 321), ("/blog/whoami/", 0)]


def test_settings_dict_configures_the_kit(tmp_path: Path, db_path: Path) -> None:
    """INSTRUMENT = {...}: field names and variable names alike; it wins over the environment."""
    other = tmp_path / "other.db"
    with override_settings(INSTRUMENT={"INSTRUMENT_METRICS_DB": str(other),
                                       "flush_interval": "0.05", "REQUEST_ID": False,
                                       "exclude_paths": ["/shop/catalog/"]}):
        c = Client()
        assert "X-Request-ID" not in c.get("/shop/items/1/")
        c.get("/shop/catalog/")  # excluded: answered, never recorded
        assert settled_count(other, 1) == 1
    assert not db_path.exists()
    assert query(other, "SELECT endpoint FROM api_metrics") == [("/shop/items/<int:item_id>/",)]
    with override_settings(INSTRUMENT={"flush_intervall": 1}), \
            pytest.raises(ConfigError, match="flush_intervall"):
        Client().get("/shop/items/1/")


def test_kill_switch_takes_the_middleware_out(monkeypatch: pytest.MonkeyPatch,
                                              db_path: Path) -> None:
    monkeypatch.setenv("INSTRUMENT_ENABLED", "false")
    response = Client().get("/shop/items/1/")
    assert response.status_code == 200 and "X-Request-ID" not in response
    assert not db_path.exists()


def test_prometheus_metrics_answered_in_front(monkeypatch: pytest.MonkeyPatch,
                                              db_path: Path) -> None:
    monkeypatch.setenv("INSTRUMENT_PROMETHEUS", "true")
    c = Client()
    c.get("/shop/items/1/")
    instrument.flush()
    scrape = c.get("/metrics")
    assert scrape.status_code == 200 and b"http_requests_total" in scrape.content
    assert rows(db_path) == [("/shop/items/<int:item_id>/", "GET", 200, None)]


# -- the dashboard under path("monitoring/", include("instrument.django.urls")) -------------
def test_health_is_open_and_status_only(db_path: Path) -> None:
    c = Client()
    health = c.get(API + "/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert c.get(API + "/routes").status_code == 404  # no token, not public: off
    assert c.get("/monitoring/").status_code == 404
    assert rows(db_path) == []  # the kit's own pages are never recorded


def test_health_public_false_closes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSTRUMENT_HEALTH_PUBLIC", "false")
    assert Client().get(API + "/health").status_code == 404


def test_token_opens_page_and_api(monkeypatch: pytest.MonkeyPatch, db_path: Path) -> None:
    monkeypatch.setenv("INSTRUMENT_DASHBOARD_TOKEN", TOKEN)
    c = Client()
    c.get("/shop/items/1/")
    instrument.flush()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert c.get(API + "/metrics/summary?hours=1").status_code == 401
    summary = c.get(API + "/metrics/summary?hours=1", headers=auth)
    assert summary.status_code == 200 and summary.json()["requests"]["requests"] == 1
    page = c.get("/monitoring/", headers=auth)
    assert page.status_code == 200 and b'data-root="/monitoring"' in page.content
    assert "Content-Security-Policy" in page and "instrument_csrf" in page.cookies
    assert c.get("/monitoring/monitoring/static/app.js").status_code == 200
    login = c.post("/monitoring/monitoring/login", data=f"token={TOKEN}",
                   content_type="application/x-www-form-urlencoded")
    assert login.status_code == 303 and login["Location"] == "/monitoring/monitoring"
    assert c.get(API + "/routes?hours=1").status_code == 200  # the session cookie now
    assert rows(db_path) == [("/shop/items/<int:item_id>/", "GET", 200, None)]


@pytest.mark.parametrize("token", [None, TOKEN])
def test_staff_users_get_in_without_the_token(token: str | None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An active staff user signed in to Django sees page and API; other users do not."""
    if token:
        monkeypatch.setenv("INSTRUMENT_DASHBOARD_TOKEN", token)
    from django.contrib.auth.models import User  # models need the apps loaded

    migrate()
    staff = User.objects.get_or_create(username="staff", defaults={"is_staff": True})[0]
    plain = User.objects.get_or_create(username="plain")[0]
    gone = User.objects.get_or_create(username="gone",
                                      defaults={"is_staff": True, "is_active": False})[0]
    refused = 401 if token else 404
    for user, status in ((staff, 200), (plain, refused), (gone, refused)):
        c = Client()
        c.force_login(user)
        assert c.get(API + "/routes?hours=1").status_code == status, user.username
        assert c.get("/monitoring/").status_code == (200 if status == 200 else
                                                     401 if token else 404)
    c = Client()
    c.force_login(staff)
    denied = c.post(API + "/alerts/x/acknowledge")  # no X-CSRF-Token: still refused
    assert denied.status_code == 403
