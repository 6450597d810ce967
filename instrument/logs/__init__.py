"""Structured logging tied to requests: JSON lines, a console format, redaction, log shipping.

``setup_logging()`` (the seed's ``utils.logging.setup_logging``) adds one
handler with :class:`JsonFormatter` (or :class:`ConsoleFormatter`) to the root
logger and, with ``store=True``, a :class:`StoreHandler` that ships every record
through the kit's ring buffer into the SQLite ``logs`` table. Nothing is
patched: libraries keep logging through :mod:`logging`, and the formatters work
on any handler you already have.

Every line logged while a request is handled carries its ``request_id``,
``method`` and ``route``: the WSGI/ASGI adapters put them in a ContextVar, so
they follow ``await``, ``contextvars.copy_context().run`` in threads, and
decorated functions. Use :func:`request_context` to give background work an id.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from typing import IO, Any

from instrument.core.redact import DEFAULT_PATTERNS, REDACTED, Redactor
from instrument.logs.context import (
    ContextFilter,
    get_request_id,
    get_traceparent,
    request_context,
)
from instrument.logs.format import ConsoleFormatter, JsonFormatter
from instrument.logs.store import KIND_LOG, StoreHandler

__all__ = [
    "DEFAULT_PATTERNS",
    "KIND_LOG",
    "REDACTED",
    "ConsoleFormatter",
    "ContextFilter",
    "JsonFormatter",
    "Redactor",
    "StoreHandler",
    "get_request_id",
    "get_traceparent",
    "request_context",
    "setup_logging",
]

_OWNED = "_instrument_owned"


def setup_logging(level: int | str = "INFO", json: bool = True, *,
                  logger: str | logging.Logger | None = None, stream: IO[str] | None = None,
                  store: bool = True, redact: Iterable[str] = DEFAULT_PATTERNS,
                  fields: Mapping[str, Any] | None = None,
                  format_existing: bool = False) -> logging.Logger:
    """Configure ``logging`` for an instrumented app and return the configured logger.

    Adds one stream handler (stderr by default) with JSON lines, or readable
    console lines with ``json=False``, to ``logger`` (the root logger by
    default), plus a :class:`StoreHandler` with ``store=True``. Calling it again
    replaces the handlers it added before and leaves yours alone;
    ``format_existing=True`` also puts the formatter on your handlers. ``redact``
    lists the key fragments whose values never reach a log line; ``fields`` are
    static fields added to every JSON line (service name, version).
    """
    target = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger)
    target.setLevel(level.upper() if isinstance(level, str) else level)
    redactor = Redactor(redact)
    formatter: logging.Formatter = (JsonFormatter(redact=redactor, fields=fields) if json
                                    else ConsoleFormatter(redact=redactor))
    for old in list(target.handlers):
        if getattr(old, _OWNED, False):
            target.removeHandler(old)
    if format_existing:
        for mine in target.handlers:
            mine.setFormatter(formatter)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    setattr(handler, _OWNED, True)
    target.addHandler(handler)
    if store:
        shipper = StoreHandler(redact=redactor)
        setattr(shipper, _OWNED, True)
        target.addHandler(shipper)
    return target
