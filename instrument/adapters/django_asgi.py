"""Django's ASGI application with the lifespan protocol answered, so uvicorn's shutdown flushes.

Django's ``ASGIHandler`` refuses lifespan scopes, and uvicorn (0.29 and later)
ends the process after a graceful shutdown without running ``atexit``
handlers, so the samples of the last flush interval would be lost. The
wrapper answers ``lifespan.startup`` and, on ``lifespan.shutdown``, flushes
what is buffered before it reports shutdown complete; HTTP goes to Django
untouched. Under gunicorn's sync workers ``atexit`` does the flush and
``django.core.wsgi.get_wsgi_application`` needs nothing of the kind.
"""

from __future__ import annotations

import asyncio
from typing import Any

from instrument.core.runtime import runtime
from instrument.types import Receive, Scope, Send

__all__ = ["LifespanFlush", "get_asgi_application"]


class LifespanFlush:
    """An ASGI app: lifespan answered here (with a flush at shutdown), the rest to ``app``."""

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                timeout = runtime.settings.shutdown_timeout if runtime.settings else 5.0
                await asyncio.get_running_loop().run_in_executor(None, runtime.flush, timeout)
                await send({"type": "lifespan.shutdown.complete"})
                return


def get_asgi_application() -> LifespanFlush:
    """``django.core.asgi.get_asgi_application()`` wrapped in :class:`LifespanFlush`."""
    from django.core.asgi import get_asgi_application as django_asgi

    return LifespanFlush(django_asgi())
