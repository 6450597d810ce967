"""Litestar helper: ``instrument_app(app)`` adds the pure ASGI middleware to a Litestar app.

Implemented in :mod:`instrument.adapters.litestar`; import it from here.
"""

from instrument.adapters.litestar import InstrumentMiddleware, instrument_app

__all__ = ["InstrumentMiddleware", "instrument_app"]
