"""Log lines for people and for machines: JSON objects, or readable console lines.

Both read the request context of the record (:mod:`instrument.logs.context`)
and pass messages, tracebacks and ``extra=`` fields through the redactor.
"""

from __future__ import annotations

import json as _json
import logging
import time
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring as _enc
from typing import Any

from instrument.core.redact import DEFAULT_PATTERNS, Redactor
from instrument.logs.context import BASE_LEN, RESERVED, context_of, extras_of, trace_of

__all__ = ["ConsoleFormatter", "JsonFormatter"]

_iso_cache: tuple[int, str] = (-1, "")


def _iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with microseconds and a ``Z``."""
    global _iso_cache
    sec = int(ts)
    cache = _iso_cache
    if cache[0] != sec:
        cache = _iso_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cache[1]}.{int((ts - sec) * 1e6):06d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, request, exception, extras."""

    def __init__(self, *, redact: Iterable[str] | Redactor = DEFAULT_PATTERNS,
                 fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.redactor = redact if isinstance(redact, Redactor) else Redactor(redact)
        self.static = dict(fields or {})
        clash = RESERVED.intersection(self.static)
        if clash:
            raise ValueError(f"fields may not override {sorted(clash)}.")
        self._redact = bool(self.redactor)
        self._encode = _json.JSONEncoder(default=str, ensure_ascii=False).encode

    def format(self, record: logging.LogRecord) -> str:
        # The fixed fields are joined by hand (each string escaped by the C encoder):
        # several times cheaper than json.dumps of a dict, which matters on every line.
        red = self.redactor
        extra = extras_of(record) if len(record.__dict__) > BASE_LEN else None
        msg = record.message = record.getMessage()
        if self._redact and ("=" in msg or ":" in msg):
            msg = red.text(msg)
        parts = ['{"timestamp": "', _iso(record.created), '", "level": ',
                 _enc(str(record.levelname)), ', "logger": ', _enc(str(record.name)),
                 ', "message": ', _enc(msg)]
        ctx = context_of(record)
        if ctx is not None:
            rid, method, route = ctx
            parts += (', "request_id": ', _enc(rid))
            if method:
                parts += (', "method": ', _enc(method))
            if route:
                parts += (', "route": ', _enc(route))
        tp = trace_of(record)
        if tp:  # minted or checked by the kit: lowercase hex, nothing to escape
            parts += (', "trace_id": "', tp[3:35], '", "span_id": "', tp[36:52], '"')
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
                out["extra_" + key if key in RESERVED else key] = value
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
        ctx = context_of(record)
        if ctx is not None:
            parts.append("[" + " ".join(x for x in ctx if x) + "]")
        parts.append(red.text(msg) if red else msg)
        extra = extras_of(record)
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
