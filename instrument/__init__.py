"""instrument: low-overhead request and function metrics with SQLite history, alerts and more.

Add ``instrument.wsgi.InstrumentMiddleware``, ``instrument.asgi.InstrumentMiddleware``,
``instrument.flask.Instrument`` or ``@instrument.timed``; everything else starts by itself
from ``INSTRUMENT_*`` environment variables, or from :func:`configure`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from instrument._envcheck import warn_unknown as _warn_unknown
from instrument.adapters.decorators import timed, timer
from instrument.config import ConfigError, Settings
from instrument.core.runtime import runtime as _runtime

__all__ = [
    "ConfigError",
    "Settings",
    "configure",
    "flush",
    "shutdown",
    "stats",
    "timed",
    "timer",
]

__version__ = "0.1.0"

if _warn_unknown not in _runtime.on_configure:
    _runtime.on_configure.append(_warn_unknown)


def configure(*, environ: Mapping[str, str] | None = None, **options: Any) -> Settings:
    """(Re)start the kit with these options; they override the environment.

    Options are the :class:`Settings` fields (``metrics_db``, ``flush_interval``,
    ``buffer_size``, ``backends=[...]``, ``enabled``, ...). Anything buffered under the
    previous configuration is flushed first.
    """
    return _runtime.configure(environ, **options)


def flush(timeout: float | None = 5.0) -> bool:
    """Wait until everything recorded before this call is in every backend.

    Returns False when ``timeout`` passed first (a backend is failing or slow);
    :func:`stats` then says which one and why.
    """
    return _runtime.flush(timeout)


def shutdown(timeout: float | None = None) -> bool:
    """Flush with a deadline and stop the background thread (also run at exit)."""
    return _runtime.shutdown(timeout)


def stats() -> dict[str, Any]:
    """The kit's own health: buffered and dropped samples, flushes, backend errors."""
    return _runtime.stats()
