"""``@timed`` and ``timer()``: function and block timing that is right for ``async def``.

Implemented in :mod:`instrument.adapters.decorators`; import it from here.
"""

from instrument.adapters.decorators import timed, timer

__all__ = ["timed", "timer"]
