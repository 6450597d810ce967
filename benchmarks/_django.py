"""The Django app the benchmarks measure: one view, and a WSGI handler per middleware stack.

Django's settings are configured once per process (``MIDDLEWARE`` empty: the bare
app is Django's request handling alone); :func:`handler` sets ``MIDDLEWARE`` and
builds a ``WSGIHandler``, which reads it once, so the variants of a group live
side by side in one process: ``bare``, ``kit`` (the kit's middleware, first) and
``django-prometheus`` (its before and after middlewares, as its README places them).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import path

__all__ = ["PATH", "PROMETHEUS", "handler", "urlpatterns"]

#: The request every variant answers.
PATH = "/items/42/"
#: Whether django-prometheus is installed (the bench extras): a variant of its own.
PROMETHEUS = importlib.util.find_spec("django_prometheus") is not None
STACKS = {
    "bare": [],
    "kit": ["instrument.django.InstrumentMiddleware"],
    "django-prometheus": ["django_prometheus.middleware.PrometheusBeforeMiddleware",
                          "django_prometheus.middleware.PrometheusAfterMiddleware"],
}


def item(request: HttpRequest, item_id: int) -> HttpResponse:
    return HttpResponse("hello")


urlpatterns = [path("items/<int:item_id>/", item)]


def _setup() -> None:
    import django
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        DEBUG=False, SECRET_KEY="benchmark-only", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
        MIDDLEWARE=[], INSTALLED_APPS=["django_prometheus"] if PROMETHEUS else [],
        DATABASES={}, USE_TZ=True, LOGGING_CONFIG=None)
    django.setup()


def handler(variant: str) -> Any:
    """A Django WSGI application whose middleware stack is ``variant``'s."""
    _setup()
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    settings.MIDDLEWARE = STACKS[variant]
    return WSGIHandler()
