"""Litestar adapter: the pure ASGI middleware around the app's own ASGI handler.

Litestar applies ``Litestar(middleware=[...])`` per route, after routing, so a
middleware given there never sees a 404 or 405; :func:`instrument_app` wraps
``app.asgi_handler`` instead (the router inside Litestar's outermost exception
handler), which every HTTP request passes through, and the app stays the
object the server imports. The route is named at the end of the request from
``scope["path_template"]``, the template Litestar's router leaves there
(``/items/{item_id}``, path parameter types left out): one dict read, nothing
formatted. A request the router did not match has no template and is recorded
as ``__unmatched__``. Litestar answers a raising handler itself (a 500, or
what an exception handler makes of it) without re-raising; an
``after_exception`` hook notes the exception's type for the middleware, except
for Litestar's own ``HTTPException`` family (``NotFoundException`` and the
like), whose status says it all.
"""

from __future__ import annotations

import asyncio
from typing import Any

from instrument._errors import missing_extra
from instrument.adapters.asgi import EXC_KEY, InstrumentMiddleware
from instrument.core.batch import UNMATCHED
from instrument.core.runtime import runtime

try:
    import litestar
    from litestar.exceptions import HTTPException
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("litestar", "litestar") from exc

__all__ = ["InstrumentMiddleware", "instrument_app"]


def _route(scope: Any, root0: str) -> str:
    """The matched template, or ``__unmatched__`` when the router raised (404, 405)."""
    return scope.get("path_template") or UNMATCHED


async def _note_exception(exc: BaseException, scope: Any) -> None:
    if not isinstance(exc, HTTPException):
        scope[EXC_KEY] = exc


async def _flush_on_shutdown() -> None:
    # Litestar answers lifespan itself, past the wrapped handler: flush before it reports
    # shutdown complete, as the ASGI middleware does for apps it wraps whole.
    timeout = runtime.settings.shutdown_timeout if runtime.settings else 5.0
    await asyncio.get_running_loop().run_in_executor(None, runtime.flush, timeout)


def instrument_app(app: litestar.Litestar, **options: Any) -> litestar.Litestar:
    """Instrument a Litestar app in place and return it (``options`` go to the middleware)."""
    handler: Any = app.asgi_handler
    if isinstance(handler, InstrumentMiddleware):
        return app  # already ours
    wrapped: Any = InstrumentMiddleware(handler, **options)
    if wrapped is handler:  # kill switch: leave the app untouched
        return app
    wrapped._resolve = _route
    app.asgi_handler = wrapped
    app.after_exception.append(_note_exception)
    app.on_shutdown.append(_flush_on_shutdown)
    return app
