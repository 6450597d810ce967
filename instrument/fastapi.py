"""FastAPI and Starlette helper: adds the pure ASGI middleware to the app you give it.

Implemented in :mod:`instrument.adapters.fastapi`; import it from here.
"""

from instrument.adapters.fastapi import InstrumentMiddleware, instrument_app

__all__ = ["InstrumentMiddleware", "instrument_app"]
