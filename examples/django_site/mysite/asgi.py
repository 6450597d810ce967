"""ASGI entry point: ``uvicorn mysite.asgi:application``.

The kit's ``get_asgi_application`` is Django's plus a flush when uvicorn shuts down
(Django ignores the lifespan protocol, and uvicorn skips ``atexit`` handlers).
"""

import os

from instrument.django import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
application = get_asgi_application()
