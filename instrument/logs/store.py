"""Log records shipped through the kit's ring buffer to the store (the ``logs`` table)."""

from __future__ import annotations

import itertools
import json as _json
import logging
from collections.abc import Iterable
from typing import Any

from instrument.core.buffer import Recorder
from instrument.core.redact import DEFAULT_PATTERNS, Redactor
from instrument.core.runtime import runtime
from instrument.core.suppress import suppressed
from instrument.logs.context import BASE_LEN, context_of, extras_of

__all__ = ["KIND_LOG", "StoreHandler"]

#: Sample kind of a shipped log record; backends find them in ``batch.other["log"]``.
KIND_LOG = "log"


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
            extra = extras_of(record) if len(record.__dict__) > BASE_LEN else None
            extra_json = self._encode(red.fields(extra)) if extra else None
            ctx = context_of(record)
            if ctx is None:
                rid = route = method = None
            else:
                rid, method, route = ctx[0], ctx[1] or None, ctx[2] or None
            rec.add((KIND_LOG, record.created, record.levelno, record.levelname, record.name,
                     msg, exc, extra_json, rid, route, method))
        except Exception:
            self.handleError(record)
