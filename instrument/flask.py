"""Flask adapter: a thin layer over the WSGI middleware that names routes by their rule.

Implemented in :mod:`instrument.adapters.flask`; import it from here.
"""

from instrument.adapters.flask import Instrument

__all__ = ["Instrument"]
