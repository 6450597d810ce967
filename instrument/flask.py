"""Flask adapter: a thin layer over the WSGI middleware that names routes by their rule.

It wraps ``app.wsgi_app`` of the app you give it and registers one
``before_request`` function (first in line) plus a ``got_request_exception``
receiver for that app only; Flask itself is never patched.
"""

from __future__ import annotations

from typing import Any

from ._aggregate import UNMATCHED
from ._errors import missing_extra
from .wsgi import EXC_KEY, ROUTE_KEY, InstrumentMiddleware

try:
    import flask
    from flask import got_request_exception, request
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("flask", "flask") from exc

__all__ = ["Instrument"]


def _name_route() -> None:
    req = request._get_current_object()  # type: ignore[attr-defined]
    rule = req.url_rule
    req.environ[ROUTE_KEY] = rule.rule if rule is not None else UNMATCHED


def _on_exception(sender: Any, exception: BaseException, **extra: Any) -> None:
    request.environ[EXC_KEY] = type(exception)


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
        app.wsgi_app = wrapped  # type: ignore[method-assign]
        app.before_request_funcs.setdefault(None, []).insert(0, _name_route)
        got_request_exception.connect(_on_exception, app, weak=False)
        app.extensions["instrument"] = self
