"""The dashboard as Django views: ``path("monitoring/", include("instrument.django.urls"))``.

Under the include's prefix ``P``: ``P`` and ``P/monitoring`` are the page,
``P/monitoring/static/...``, ``P/monitoring/login`` and ``P/monitoring/logout``
its assets and sign-in, ``P/api/v1/monitoring/...`` the REST API (the page
finds them all from ``P``, its root). The views hand each request to the same
:class:`~instrument.dashboard.Dashboard` the other adapters mount, so access
works as everywhere: ``INSTRUMENT_DASHBOARD_TOKEN`` (bearer or the login form),
``INSTRUMENT_DASHBOARD_PUBLIC``, and the status-only health check open unless
``INSTRUMENT_HEALTH_PUBLIC=false``. A signed-in Django user who is active and
staff (``request.user.is_active and request.user.is_staff``, which needs
``AuthenticationMiddleware``) is let in as well, token or not. The views are
exempt from Django's CSRF middleware: the dashboard checks its own double-submit
token and the request's origin on every write. Requests to them are not recorded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from instrument.adapters.django import REQUEST_ATTR
from instrument.adapters.django_conf import django_settings
from instrument.dashboard import PAGE, for_settings
from instrument.dashboard._glue import MAX_BODY
from instrument.dashboard._http import Request, problem

try:
    from django.http import HttpRequest, HttpResponse
    from django.urls import path, re_path
    from django.views.decorators.csrf import csrf_exempt
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    from instrument._errors import missing_extra

    raise missing_extra("django", "django") from exc

__all__ = ["app_name", "dashboard_view", "is_staff", "urlpatterns"]

app_name = "instrument"


def is_staff(request: HttpRequest) -> bool:
    """An active staff user signed in to Django (False without AuthenticationMiddleware)."""
    user = getattr(request, "user", None)
    return bool(user is not None and getattr(user, "is_active", False)
                and getattr(user, "is_staff", False))


def _as_request(request: HttpRequest, sub: str) -> Request | None:
    """The dashboard's view of a Django request, or None when its body is too large."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    body = b""
    method = (request.method or "GET").upper()
    if method == "POST":
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            return None
        body = request.body if length else b""
    full = request.path  # SCRIPT_NAME included: the page's links are absolute
    root = full[: len(full) - len(sub)].rstrip("/") if full.endswith(sub) else ""
    return Request(method, "/" + sub if sub else PAGE, request.META.get("QUERY_STRING", ""),
                   headers, body, request.scheme or "http", root)


def _as_django(answer: Any, method: str) -> HttpResponse:
    response = HttpResponse(b"" if method == "HEAD" else answer.body, status=answer.status,
                            content_type=answer.content_type)
    for key, value in answer.header_list():
        low = key.lower()
        if low == "set-cookie":
            response.cookies.load(value)  # Django sends cookies from here, one header each
        elif low != "content-type":
            response[key] = value
    return response


@csrf_exempt
def dashboard_view(request: HttpRequest, sub: str = "") -> HttpResponse:
    """Any dashboard path below the include: translate, let the dashboard answer, translate back."""
    ex = getattr(request, REQUEST_ATTR, None)
    if ex is not None:
        ex.skip = True  # the kit's own pages are never recorded, as with the other adapters
    settings = django_settings()
    if is_staff(request) and not settings.dashboard_public:
        dashboard = for_settings(dataclasses.replace(settings, dashboard_public=True),
                                 announce=False)
    else:
        dashboard = for_settings(settings)
    req = _as_request(request, sub)
    if req is None:
        answer = problem(413, f"Bodies are limited to {MAX_BODY} bytes.")
    else:
        answer = dashboard(req)
    return _as_django(answer, req.method if req is not None else "POST")


urlpatterns = [
    path("", dashboard_view, name="dashboard"),
    re_path(r"^(?P<sub>(?:monitoring|api/v1/monitoring)(?:/.*)?)$", dashboard_view,
            name="dashboard-path"),
]

