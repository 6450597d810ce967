"""ASGI entry point (uvicorn ``djsite.asgi:application``): Django's, flushed at shutdown."""

import os

from instrument.django import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")
application = get_asgi_application()
