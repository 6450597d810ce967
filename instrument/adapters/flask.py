"""Flask adapter: a thin layer over the WSGI middleware that names routes by their rule.

It wraps ``app.wsgi_app`` of the app you give it, gives that app a subclass of
its ``request_class`` that notes the rule as Flask matches it (a property
setter on ``url_rule``: one small call per request, where a ``before_request``
function costs Flask's whole hook dispatch), and registers a
``got_request_exception`` receiver for that app only. Flask itself is never
patched. A body Flask holds whole as bytes reaches the server as a list, so
the middleware times it without wrapping werkzeug's stream (see
:func:`_response_class`). Set a custom ``request_class`` or ``response_class``
before calling ``init_app``.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

from instrument._errors import missing_extra
from instrument.adapters.wsgi import EXC_KEY, ROUTE_KEY, InstrumentMiddleware
from instrument.core.batch import UNMATCHED

try:
    import flask
    from flask import got_request_exception, request
    from flask.wrappers import Request, Response
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("flask", "flask") from exc

__all__ = ["Instrument"]


def _set_rule(req: Any, rule: Any) -> None:
    req._instrument_rule = rule
    req.environ[ROUTE_KEY] = rule.rule if rule is not None else UNMATCHED


_classes: dict[type, type] = {}


def _request_class(base: type[Request]) -> type[Request]:
    """``base`` with a ``url_rule`` that also names the route for the middleware."""
    if getattr(base, "_instrument_rule", _MISSING) is not _MISSING:
        return base  # already ours
    cls = _classes.get(base)
    if cls is None:
        # The getter is a C callable, so Flask's own reads of url_rule stay cheap.
        cls = _classes[base] = type(base.__name__, (base,), {
            "__module__": base.__module__, "__doc__": base.__doc__,
            "_instrument_rule": None,
            "url_rule": property(attrgetter("_instrument_rule"), _set_rule),
        })
    return cls


_MISSING = object()
_responses: dict[type, type] = {}


def _response_class(base: type[Response]) -> type[Response]:
    """``base`` handing a body it holds whole as bytes to the server as that list.

    Werkzeug wraps every body in a generator and a ``ClosingIterator`` whose
    ``close`` calls :meth:`Response.close`; the middleware would then have to
    wrap that stream too, one more generator the server resumes per chunk.
    A list of bytes with nothing registered to run on close needs neither:
    the middleware's list path sizes it at close and the server iterates it
    natively. Anything else (streams, ``call_on_close``, ``direct_passthrough``,
    HEAD and bodiless statuses, str chunks) takes werkzeug's own path.
    """
    if getattr(base, "_instrument_body", False):
        return base  # already ours
    cls = _responses.get(base)
    if cls is None:
        inherited = base.get_app_iter

        def get_app_iter(self: Any, environ: Any) -> Any:
            body = self.response
            if body.__class__ is list and not self._on_close and not self.direct_passthrough:
                status = self.status_code
                if status >= 200 and status != 204 and status != 304 and (
                        environ["REQUEST_METHOD"] != "HEAD"):
                    for chunk in body:
                        if chunk.__class__ is not bytes:
                            break
                    else:
                        return body
            return inherited(self, environ)

        cls = _responses[base] = type(base.__name__, (base,), {
            "__module__": base.__module__, "__doc__": base.__doc__,
            "_instrument_body": True, "get_app_iter": get_app_iter,
        })
    return cls


def _on_exception(sender: Any, exception: BaseException, **extra: Any) -> None:
    request.environ[EXC_KEY] = exception


class Instrument:
    """``Instrument(app)`` or ``ext = Instrument(); ext.init_app(app)``."""

    def __init__(self, app: flask.Flask | None = None, **options: Any) -> None:
        self.options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        original = app.wsgi_app  # a bound method: each attribute read is a new object
        wrapped = InstrumentMiddleware(original, **self.options)
        if wrapped is original:  # kill switch: leave the app untouched
            return
        wrapped._unrouted = UNMATCHED  # no rule matched: one label, never the raw path
        app.wsgi_app = wrapped  # type: ignore[method-assign]
        app.request_class = _request_class(app.request_class)
        app.response_class = _response_class(app.response_class)
        got_request_exception.connect(_on_exception, app, weak=False)
        app.extensions["instrument"] = self
