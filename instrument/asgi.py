"""Pure ASGI middleware, never ``BaseHTTPMiddleware``: ``app.add_middleware(InstrumentMiddleware)``.

Implemented in :mod:`instrument.adapters.asgi`; import it from here.
"""

from instrument.adapters.asgi import InstrumentMiddleware

__all__ = ["InstrumentMiddleware"]
