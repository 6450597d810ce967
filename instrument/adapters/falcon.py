"""Falcon adapter, for ``falcon.App`` (WSGI) and ``falcon.asgi.App`` (ASGI).

:func:`instrument_app` adds a middleware component whose ``process_resource``
hook, the one Falcon calls once it has routed, copies ``req.uri_template``
(``/items/{item_id:int}``, as the route was added) where the kit's middleware
reads it at the end of the request: ``environ["instrument.route"]`` (WSGI) or
``scope["instrument.route"]`` (ASGI). Falcon calls that hook only when a
resource matched, so a request that reaches no route is recorded as
``__unmatched__``, never by its path. It then returns the app wrapped by the
kit's WSGI or ASGI middleware: serve what it returns.

Falcon answers exceptions itself: ``falcon.HTTPError`` and ``HTTPStatus`` as
their status, anything else as a 500 through its default ``Exception``
handler. That handler is wrapped to note the exception's type for the
middleware, then Falcon's own handler answers as before; an ``Exception``
handler you register yourself replaces it (you handled the error).
"""

from __future__ import annotations

from typing import Any

from instrument._errors import missing_extra
from instrument.adapters import asgi, wsgi
from instrument.core.batch import UNMATCHED

try:
    import falcon
    import falcon.asgi
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("falcon", "falcon") from exc

__all__ = ["RouteNamer", "RouteNamerAsync", "instrument_app"]

_ROUTE_KEY = wsgi.ROUTE_KEY  # the same key in an ASGI scope


class RouteNamer:
    """Falcon WSGI middleware component: notes the matched template for the kit."""

    __slots__ = ()

    def process_resource(self, req: Any, resp: Any, resource: Any, params: Any) -> None:
        req.env[_ROUTE_KEY] = req.uri_template


class RouteNamerAsync:
    """Falcon ASGI middleware component: notes the matched template for the kit."""

    __slots__ = ()

    async def process_resource(self, req: Any, resp: Any, resource: Any, params: Any) -> None:
        req.scope[_ROUTE_KEY] = req.uri_template


def _asgi_route(scope: Any, root0: str) -> str:
    return scope.get(_ROUTE_KEY) or UNMATCHED


def _wrap_default_handler(app: Any, is_asgi: bool) -> None:
    """Note the type of exceptions Falcon's default ``Exception`` handler turns into a 500."""
    default = app._error_handlers.get(Exception)
    if getattr(default, "__func__", None) is not type(app)._python_error_handler:
        return  # the app's own Exception handler: its errors are handled ones
    if is_asgi:
        async def handler(req: Any, resp: Any, ex: Exception, params: Any, **kw: Any) -> None:
            req.scope[asgi.EXC_KEY] = ex
            await default(req, resp, ex, params, **kw)
    else:
        def handler(req: Any, resp: Any, ex: Exception, params: Any, **kw: Any) -> None:  # type: ignore[misc]
            req.env[wsgi.EXC_KEY] = ex
            default(req, resp, ex, params, **kw)
    app._error_handlers[Exception] = handler


def instrument_app(app: falcon.App, **options: Any) -> Any:
    """Add the route-naming component to ``app`` and return it wrapped by the kit's middleware.

    ``app = instrument_app(falcon.App())`` after adding routes, or keep the Falcon app
    under another name; ``options`` go to the middleware (``exclude_paths``).
    """
    if any(isinstance(mc, (RouteNamer, RouteNamerAsync))
           for mc in getattr(app, "_unprepared_middleware", ())):
        # a second wrapper would record every request twice
        raise ValueError("instrument_app was already called on this Falcon app;"
                         " serve what that call returned")
    wrapped: Any
    raw: Any = app  # Falcon types its callables more narrowly than the kit's ASGI/WSGI aliases
    if isinstance(app, falcon.asgi.App):
        wrapped = asgi.InstrumentMiddleware(raw, **options)
        if wrapped is app:  # kill switch: leave the app untouched
            return app
        wrapped._resolve = _asgi_route
        app.add_middleware(RouteNamerAsync())
        _wrap_default_handler(app, True)
    else:
        wrapped = wsgi.InstrumentMiddleware(raw, **options)
        if wrapped is app:
            return app
        wrapped._unrouted = UNMATCHED  # no route matched: one label, never the raw path
        app.add_middleware(RouteNamer())
        _wrap_default_handler(app, False)
    return wrapped
