"""Outgoing HTTP calls made with ``requests``, recorded as kind ``"client"``.

Implemented in :mod:`instrument.adapters.requests`; import it from here.
"""

from instrument.adapters.requests import (
    client_route,
    instrument_all_sessions,
    instrument_session,
    uninstrument_all_sessions,
)

__all__ = [
    "client_route",
    "instrument_all_sessions",
    "instrument_session",
    "uninstrument_all_sessions",
]
