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

import itertools
import json as _json
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from json.encoder import encode_basestring as _enc
from typing import IO, Any

from instrument.core.buffer import Recorder
from instrument.core.context import READERS, Manual, current, describe, new_id
from instrument.core.redact import DEFAULT_PATTERNS, REDACTED, Redactor
from instrument.core.runtime import runtime
from instrument.core.suppress import suppressed

READERS[0] = True  # the adapters make each request current from now on

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
    "request_context",
    "setup_logging",
]

#: Sample kind of a shipped log record; backends find them in ``batch.other["log"]``.
KIND_LOG = "log"

_OWNED = "_instrument_owned"
_CTX_ATTR = "instrument_ctx"
_NO_CTX = object()
_BASE = logging.LogRecord("", 0, "", 0, "", (), None).__dict__
_BASE_LEN = len(_BASE)  # a record with no extra= fields has at most this many + message, asctime
_STANDARD = frozenset(_BASE) | {
    "message", "asctime", "taskName", _CTX_ATTR}
_RESERVED = frozenset({"timestamp", "level", "logger", "message", "request_id", "method",
                       "route", "exception", "stack"})
_iso_cache: tuple[int, str] = (-1, "")


def _iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with microseconds and a ``Z``."""
    global _iso_cache
    sec = int(ts)
    cache = _iso_cache
    if cache[0] != sec:
        cache = _iso_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cache[1]}.{int((ts - sec) * 1e6):06d}Z"


def _context_of(record: logging.LogRecord) -> tuple[str, str, str] | None:
    """``(request_id, method, route)`` of the request that logged, or None."""
    ctx = record.__dict__.get(_CTX_ATTR, _NO_CTX)
    if ctx is _NO_CTX:
        ctx = current.get()
    if ctx is None or ctx.__class__ is tuple:  # stamped by ContextFilter: already described
        return ctx  # type: ignore[no-any-return]
    return describe(ctx)


def _extras(record: logging.LogRecord) -> dict[str, Any] | None:
    d = record.__dict__
    if len(d) <= _BASE_LEN:
        return None
    keys = d.keys() - _STANDARD
    if not keys:
        return None
    return {k: v for k, v in d.items() if k in keys and not k.startswith("_")} or None


def get_request_id() -> str | None:
    """The id of the request being handled in this context, or None."""
    ctx = current.get()
    return describe(ctx)[0] if ctx is not None else None


@contextmanager
def request_context(request_id: str | None = None, *, route: str = "",
                    method: str = "") -> Iterator[str]:
    """Give work outside a request (a job, a consumer) an id its log lines carry."""
    rid = request_id or new_id()
    token = current.set(Manual(rid, method, route))
    try:
        yield rid
    finally:
        current.reset(token)


class ContextFilter(logging.Filter):
    """Stamps the request context on the record, for handlers that format in another thread.

    Add it to a ``QueueHandler`` so the listener thread's formatter still sees the
    id of the request that logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current.get()
        record.__dict__[_CTX_ATTR] = describe(ctx) if ctx is not None else None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, request, exception, extras."""

    def __init__(self, *, redact: Iterable[str] | Redactor = DEFAULT_PATTERNS,
                 fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.redactor = redact if isinstance(redact, Redactor) else Redactor(redact)
        self.static = dict(fields or {})
        clash = _RESERVED.intersection(self.static)
        if clash:
            raise ValueError(f"fields may not override {sorted(clash)}.")
        self._redact = bool(self.redactor)
        self._encode = _json.JSONEncoder(default=str, ensure_ascii=False).encode

    def format(self, record: logging.LogRecord) -> str:
        # The fixed fields are joined by hand (each string escaped by the C encoder):
        # several times cheaper than json.dumps of a dict, which matters on every line.
        red = self.redactor
        extra = _extras(record) if len(record.__dict__) > _BASE_LEN else None
        msg = record.message = record.getMessage()
        if self._redact and ("=" in msg or ":" in msg):
            msg = red.text(msg)
        parts = ['{"timestamp": "', _iso(record.created), '", "level": ',
                 _enc(str(record.levelname)), ', "logger": ', _enc(str(record.name)),
                 ', "message": ', _enc(msg)]
        ctx = _context_of(record)
        if ctx is not None:
            rid, method, route = ctx
            parts += (', "request_id": ', _enc(rid))
            if method:
                parts += (', "method": ', _enc(method))
            if route:
                parts += (', "route": ', _enc(route))
        out: dict[str, Any] = {}
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
            et, ev = record.exc_info[0], record.exc_info[1]
            out["exception"] = {"type": et.__name__ if et else None,
                                "message": red.text(str(ev)) if red else str(ev),
                                "traceback": red.text(record.exc_text) if red else record.exc_text}
        elif record.exc_text:
            out["exception"] = {"traceback": record.exc_text}
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        if extra:
            for key, value in red.fields(extra).items():
                out["extra_" + key if key in _RESERVED else key] = value
        for key, value in self.static.items():
            out.setdefault(key, value)
        if out:
            parts += (", ", self._encode(out)[1:-1])
        parts.append("}")
        return "".join(parts)


class ConsoleFormatter(logging.Formatter):
    """Readable lines for development: ``12:00:01.234 INFO  app [id GET /x] message k=v``."""

    def __init__(self, *, redact: Iterable[str] | Redactor = DEFAULT_PATTERNS) -> None:
        super().__init__()
        self.redactor = redact if isinstance(redact, Redactor) else Redactor(redact)

    def format(self, record: logging.LogRecord) -> str:
        red = self.redactor
        msg = record.message = record.getMessage()
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        parts = [f"{ts}.{int(record.msecs):03d} {record.levelname:<8} {record.name}"]
        ctx = _context_of(record)
        if ctx is not None:
            parts.append("[" + " ".join(x for x in ctx if x) + "]")
        parts.append(red.text(msg) if red else msg)
        extra = _extras(record)
        if extra:
            parts.extend(f"{k}={v!r}" for k, v in sorted(red.fields(extra).items()))
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + (red.text(record.exc_text) if red else record.exc_text)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class StoreHandler(logging.Handler):
    """Ships records through the kit's ring buffer to the backends (SQLite ``logs`` table).

    ``emit`` formats the message, reads the request context and appends one tuple
    to the lock-free buffer; it never waits for I/O or takes the handler lock. A
    full buffer drops the record and counts it in :attr:`dropped` (and in the
    kit's ``stats()["dropped"]``). Records are shipped only while the kit runs, and
    never from the kit's own threads.
    """

    def __init__(self, level: int | str = logging.NOTSET, *,
                 redact: Iterable[str] | Redactor = DEFAULT_PATTERNS,
                 recorder: Recorder | None = None) -> None:
        super().__init__(level)
        self.redactor = redact if isinstance(redact, Redactor) else Redactor(redact)
        self._redact = bool(self.redactor)
        self._rec = recorder if recorder is not None else runtime.recorder
        self._drops = itertools.count()
        self._fmt = logging.Formatter()
        self._encode = _json.JSONEncoder(default=str, ensure_ascii=False).encode

    @property
    def dropped(self) -> int:
        """Records this handler lost to a full buffer."""
        return int(repr(self._drops)[6:-1])

    def handle(self, record: logging.LogRecord) -> Any:
        # logging.Handler.handle takes self.lock around emit; the buffer needs no lock.
        rv = self.filter(record)
        if rv:
            self.emit(rv if isinstance(rv, logging.LogRecord) else record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        rec = self._rec
        if not rec.enabled or suppressed.get():
            return
        if len(rec.buf) >= rec.cap:
            next(self._drops)
            next(rec.drops)  # the kit's own drop count (stats()["dropped"]) includes it
            return
        try:
            msg = record.getMessage()
            exc = record.exc_text
            if record.exc_info and not exc:
                exc = record.exc_text = self._fmt.formatException(record.exc_info)
            if record.stack_info:
                exc = (exc + "\n" if exc else "") + self._fmt.formatStack(record.stack_info)
            red = self.redactor
            if self._redact:
                if "=" in msg or ":" in msg:  # Redactor.text's own first test, without the call
                    msg = red.text(msg)
                if exc:
                    exc = red.text(exc)
            extra = _extras(record) if len(record.__dict__) > _BASE_LEN else None
            extra_json = self._encode(red.fields(extra)) if extra else None
            ctx = _context_of(record)
            if ctx is None:
                rid = route = method = None
            else:
                rid, method, route = ctx[0], ctx[1] or None, ctx[2] or None
            rec.add((KIND_LOG, record.created, record.levelno, record.levelname, record.name,
                     msg, exc, extra_json, rid, route, method))
        except Exception:
            self.handleError(record)


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
