"""Error groups: unhandled exceptions fingerprinted the way Sentry groups them.

The request path keeps the exception object it already caught (instead of its type)
and re-raises it unchanged; everything else happens here, in the flusher. An
exception's group is its type and the innermost frame of the *user's* code it left
through: the function and the text of the line (not the line number, which moves with
every edit above it). Frames of the standard library, of installed packages and of
the kit itself are not the user's. So one bug in a helper two routes call is one
group, two bugs in one view are two, and a group survives a redeploy that only shifts
lines. An exception raised with no frame of the user's code is grouped by its
innermost frame; one with no traceback by its type and message, digits folded.

Every occurrence is a row (time, group, request and trace id, kind, route, method,
status, pid), as every request is a raw row; a group's row carries its latest
message (redacted) and traceback (file, line, function and source line of each frame,
never a local variable), formatted once per group and batch, not per occurrence.
"""

from __future__ import annotations

import hashlib
import json
import linecache
import os
import re
import site
import sysconfig
from typing import Any

from instrument.core.redact import Redactor

__all__ = ["GROUP_WIDTH", "OCCURRENCE_WIDTH", "Grouper", "in_app"]

#: Values in one occurrence row: (timestamp, minute, group_id, request_id, trace_id, kind,
#: route, method, status_code, pid).
OCCURRENCE_WIDTH = 10
#: Values in one group row: (group_id, type, message, culprit, first_seen, last_seen, count,
#: traceback JSON).
GROUP_WIDTH = 8

_MAX_MESSAGE = 1024
_MAX_FRAMES = 50  # the innermost ones are kept: where it went wrong
_MAX_CACHE = 4096
_DIGITS = re.compile(r"\d+")


def _not_app_roots() -> tuple[str, ...]:
    roots = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            roots.add(os.path.realpath(paths[key]))
    try:
        roots.update(os.path.realpath(p) for p in site.getsitepackages())
        roots.add(os.path.realpath(site.getusersitepackages()))
    except AttributeError:  # a virtualenv's old site.py
        pass
    roots.add(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # the kit
    return tuple(r.rstrip(os.sep) + os.sep for r in roots)


_ROOTS = _not_app_roots()
_IN_APP: dict[str, bool] = {}


def in_app(filename: str) -> bool:
    """Whether a frame of ``filename`` is the user's code (not the stdlib, a package, the kit)."""
    known = _IN_APP.get(filename)
    if known is None:
        if filename.startswith("<"):
            known = False
        else:
            path = os.path.realpath(filename)
            known = (not path.startswith(_ROOTS) and "site-packages" not in path
                     and "dist-packages" not in path)
        if len(_IN_APP) < _MAX_CACHE:
            _IN_APP[filename] = known
    return known


def _qualname(code: Any) -> str:
    """``Class.method`` where Python knows it (3.11+), else the function's name."""
    return str(getattr(code, "co_qualname", code.co_name))


def _type_name(cls: type) -> str:
    module = cls.__module__
    name = cls.__qualname__
    return name if module in ("builtins", "__main__") else f"{module}.{name}"


def _message(exc: BaseException, redactor: Redactor) -> str:
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not lose the occurrence
        text = "<unprintable>"
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "…"
    return redactor.text(text) if redactor else text


def _frames(tb: Any) -> list[dict[str, Any]]:
    out = []
    while tb is not None:
        code = tb.tb_frame.f_code
        line = tb.tb_lineno
        out.append({"file": code.co_filename, "line": line, "function": _qualname(code),
                    "code": linecache.getline(code.co_filename, line).strip() or None,
                    "in_app": in_app(code.co_filename)})
        tb = tb.tb_next
    return out[-_MAX_FRAMES:]


def _traceback(exc: BaseException, redactor: Redactor) -> str:
    """The traceback as stored: frames outermost first, and the exception it came from."""
    doc: dict[str, Any] = {"type": _type_name(exc.__class__), "message": _message(exc, redactor),
                           "frames": _frames(exc.__traceback__)}
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if isinstance(cause, BaseException):
        doc["cause"] = {"type": _type_name(cause.__class__),
                        "message": _message(cause, redactor),
                        "frames": _frames(cause.__traceback__)}
    return json.dumps(doc, ensure_ascii=False)


class Grouper:
    """Turns the exceptions of a batch into occurrence rows and group rows (one per flusher)."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        self.redactor = redactor if redactor is not None else Redactor()
        self._ids: dict[tuple[Any, ...], tuple[str, str]] = {}  # (type, code, line) -> id, culprit
        # this batch: group id -> [exception (latest), first stamp, last stamp, count, culprit]
        self._seen: dict[str, list[Any]] = {}

    def group(self, exc: BaseException) -> tuple[str, str]:
        """The group id of ``exc`` and its culprit (``module in function``)."""
        cls = exc.__class__
        tb = exc.__traceback__
        last = inner = None
        while tb is not None:
            code = tb.tb_frame.f_code
            inner = tb
            if in_app(code.co_filename):
                last = tb
            tb = tb.tb_next
        tb = last if last is not None else inner
        if tb is None:  # never raised: its type and message, numbers folded
            key: tuple[Any, ...] = (cls, _DIGITS.sub("0", _message(exc, self.redactor)))
        else:
            key = (cls, tb.tb_frame.f_code, tb.tb_lineno)
        found = self._ids.get(key)
        if found is not None:
            return found
        if tb is None:
            parts = [_type_name(cls), key[1]]
            culprit = ""
        else:
            code = tb.tb_frame.f_code
            module = tb.tb_frame.f_globals.get("__name__") or os.path.basename(code.co_filename)
            text = linecache.getline(code.co_filename, tb.tb_lineno).strip()
            parts = [_type_name(cls), str(module), _qualname(code), text]
            culprit = f"{module} in {_qualname(code)}"
        digest = hashlib.sha1("\0".join(parts).encode("utf-8", "replace")).hexdigest()[:16]
        found = (digest, culprit)
        if len(self._ids) < _MAX_CACHE:
            self._ids[key] = found
        return found

    def offer(self, exc: BaseException, stamp: str, minute: int, request_id: str | None,
              trace_id: str | None, kind: str, route: str, method: str, status: int,
              pid: int) -> tuple[Any, ...]:
        """One occurrence: its row, with the group noted for :meth:`take`."""
        gid, culprit = self.group(exc)
        seen = self._seen.get(gid)
        if seen is None:
            self._seen[gid] = [exc, stamp, stamp, 1, culprit]
        else:
            if stamp >= seen[2]:
                seen[0], seen[2] = exc, stamp
            if stamp < seen[1]:
                seen[1] = stamp
            seen[3] += 1
        return (stamp, minute, gid, request_id, trace_id, kind, route, method, status, pid)

    def take(self) -> list[tuple[Any, ...]]:
        """The group rows of the occurrences offered since the last call (and forget them)."""
        rows = []
        for gid, (exc, first, last, count, culprit) in self._seen.items():
            try:
                tb = _traceback(exc, self.redactor)
            except Exception:  # a frame's source unreadable: keep the group without it
                tb = None
            rows.append((gid, _type_name(exc.__class__), _message(exc, self.redactor), culprit,
                         first, last, count, tb))
        self._seen.clear()  # no exception (nor its frames) outlives the batch
        return rows
