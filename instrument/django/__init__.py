"""Django adapter: ``"instrument.django.InstrumentMiddleware"`` first in ``MIDDLEWARE``.

The dashboard mounts with ``path("monitoring/", include("instrument.django.urls"))``;
:func:`get_asgi_application` is Django's, plus a flush when uvicorn shuts down.
Implemented in :mod:`instrument.adapters.django`; import it from here.
"""

from instrument.adapters.django import InstrumentMiddleware
from instrument.adapters.django_asgi import get_asgi_application

__all__ = ["InstrumentMiddleware", "get_asgi_application"]
