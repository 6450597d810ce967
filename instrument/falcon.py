"""Falcon helper: ``app = instrument_app(app)`` for ``falcon.App`` and ``falcon.asgi.App``.

Implemented in :mod:`instrument.adapters.falcon`; import it from here.
"""

from instrument.adapters.falcon import RouteNamer, RouteNamerAsync, instrument_app

__all__ = ["RouteNamer", "RouteNamerAsync", "instrument_app"]
