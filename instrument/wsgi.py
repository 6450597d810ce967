"""WSGI middleware: times each request until its response iterable is closed.

Implemented in :mod:`instrument.adapters.wsgi`; import it from here.
"""

from instrument.adapters.wsgi import EXC_KEY, ROUTE_KEY, InstrumentMiddleware

__all__ = ["EXC_KEY", "ROUTE_KEY", "InstrumentMiddleware"]
