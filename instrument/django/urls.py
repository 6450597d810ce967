"""The dashboard's URLconf: ``path("monitoring/", include("instrument.django.urls"))``.

Implemented in :mod:`instrument.adapters.django_urls`; include it from here.
"""

from instrument.adapters.django_urls import app_name, dashboard_view, urlpatterns

__all__ = ["app_name", "dashboard_view", "urlpatterns"]
