"""Outgoing HTTP calls made with ``requests``, recorded as kind ``"client"``.

``instrument_session(session)`` wraps that one session's ``send``;
``instrument_all_sessions()`` is the explicit opt-in that wraps
``requests.Session.send`` itself (undone by ``uninstrument_all_sessions()``),
so module-level ``requests.get`` is covered too. Each call records method,
name (host plus a route template such as ``/users/{id}`` when one is given, else
the host alone, so ids in URLs never explode cardinality), status, duration,
bytes sent and received, and the exception type; redirects count once, under the
first URL. The id of the request being handled is sent on in ``X-Request-ID``,
and its trace in ``traceparent`` (the same trace id, a fresh span id for the call)
with the ``tracestate`` it came with.
Calls made under the kit's suppress flag (alert channels, webhooks) are not
recorded and carry no id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from time import perf_counter
from typing import Any
from urllib.parse import urlsplit

from instrument._errors import missing_extra
from instrument.core.buffer import KIND_CLIENT
from instrument.core.context import (
    READERS,
    REQUEST_ID_HEADER,
    current,
    describe,
    traceparent_of,
    tracestate_of,
)
from instrument.core.runtime import ON, UNSTARTED, runtime
from instrument.core.suppress import suppressed
from instrument.core.trace import TRACEPARENT, TRACESTATE, child_of

try:
    import requests
except ImportError as exc:  # pragma: no cover - requests is a core dependency
    raise missing_extra("requests", "requests") from exc

READERS[0] = True  # the adapters make each request current from now on

__all__ = ["client_route", "instrument_all_sessions", "instrument_session",
           "uninstrument_all_sessions"]

_in_call: ContextVar[bool] = ContextVar("instrument_client_call", default=False)
_route: ContextVar[str | None] = ContextVar("instrument_client_route", default=None)
_ATTR = "_instrument_templates"
_original_send: Any = None


class _Templates:
    """Route templates (``/users/{id}``) matched against a URL path, first match wins."""

    __slots__ = ("patterns",)

    def __init__(self, templates: Iterable[str]) -> None:
        self.patterns = [(_compile(t), t) for t in templates]

    def match(self, path: str) -> str | None:
        for regex, template in self.patterns:
            if regex.fullmatch(path):
                return template
        return None


def _compile(template: str) -> re.Pattern[str]:
    if not template.startswith("/"):
        raise ValueError(f"A route template must start with '/', got {template!r}.")
    out, pos = "", 0
    for m in re.finditer(r"{([^}:]+)(?::([^}]+))?}", template):
        out += re.escape(template[pos:m.start()]) + (".+" if m.group(2) == "path" else "[^/]+")
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + "/?")


@contextmanager
def client_route(template: str) -> Iterator[None]:
    """Name the calls made in this block by ``template``: ``with client_route("/users/{id}"):``."""
    token = _route.set(template)
    try:
        yield
    finally:
        _route.reset(token)


def _name(url: str, templates: _Templates | None) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2].lower()
    template = _route.get()
    if template is None and templates is not None:
        template = templates.match(parts.path or "/")
    return host + template if template else host


def _body_size(request: requests.PreparedRequest) -> int:
    body = request.body
    if body is None:
        return 0
    if isinstance(body, bytes):
        return len(body)
    if isinstance(body, str):
        return len(body.encode("utf-8"))
    try:
        return int(request.headers.get("Content-Length") or 0)
    except ValueError:
        return 0


def _response_size(response: requests.Response) -> int:
    content = getattr(response, "_content", False)
    if isinstance(content, bytes):
        return len(content)
    try:
        return int(response.headers.get("Content-Length") or 0)
    except ValueError:
        return 0


def _propagate(ctx: Any, headers: Any) -> None:
    """Send the request's id and trace on, unless the caller set them itself."""
    if REQUEST_ID_HEADER not in headers:
        rid = describe(ctx)[0]
        if rid:
            headers[REQUEST_ID_HEADER] = rid
    if TRACEPARENT not in headers:
        tp = traceparent_of(ctx)
        if tp:
            headers[TRACEPARENT] = child_of(tp[3:35], tp[53:55])
            state = tracestate_of(ctx)
            if state and TRACESTATE not in headers:
                headers[TRACESTATE] = state


def _send(send: Any, request: requests.PreparedRequest, kwargs: dict[str, Any],
          templates: _Templates | None) -> requests.Response:
    if suppressed.get() or _in_call.get():
        return send(request, **kwargs)
    if runtime.state == UNSTARTED:
        runtime.ensure_started()
    ctx = current.get()
    if ctx is not None:
        _propagate(ctx, request.headers)
    if runtime.state != ON:
        return send(request, **kwargs)
    token = _in_call.set(True)
    t0 = perf_counter()
    try:
        response = send(request, **kwargs)
    except BaseException as e:
        t1 = perf_counter()
        _in_call.reset(token)
        runtime.recorder.add((KIND_CLIENT, t0, t1, _name(request.url or "", templates),
                              request.method or "", 0, _body_size(request), 0, type(e)))
        raise
    t1 = perf_counter()
    _in_call.reset(token)
    runtime.recorder.add((KIND_CLIENT, t0, t1, _name(request.url or "", templates),
                          request.method or "", response.status_code, _body_size(request),
                          _response_size(response), None))
    return response


def instrument_session(session: requests.Session, *,
                       templates: Iterable[str] = ()) -> requests.Session:
    """Record every call this session makes; returns the same session.

    ``templates`` are route templates for the services it talks to
    (``["/users/{id}", "/files/{name:path}"]``); a call whose path matches one is
    named ``host/template``, any other by its host. Calling again replaces them.
    """
    compiled = _Templates(templates)
    if _ATTR in session.__dict__:
        session.__dict__[_ATTR][0] = compiled
        return session
    holder = [compiled]
    send = session.send  # the class's send, bound (or the global wrapper when opted in)

    def instrumented_send(request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        return _send(send, request, kwargs, holder[0])

    session.__dict__[_ATTR] = holder
    session.send = instrumented_send  # type: ignore[method-assign]
    return session


def instrument_all_sessions(*, templates: Iterable[str] = ()) -> None:
    """Opt in: record calls of every ``requests`` session, ``requests.get`` included.

    This replaces ``requests.Session.send`` for the whole process, so it is a
    call you make on purpose, not something the kit does on import.
    """
    global _original_send
    compiled = _Templates(templates)
    if _original_send is None:
        _original_send = requests.Session.send
    original = _original_send

    def send(self: requests.Session, request: requests.PreparedRequest,
             **kwargs: Any) -> requests.Response:
        return _send(original.__get__(self), request, kwargs, compiled)

    send.__wrapped__ = original  # type: ignore[attr-defined]
    requests.Session.send = send  # type: ignore[method-assign]


def uninstrument_all_sessions() -> None:
    """Undo :func:`instrument_all_sessions`."""
    global _original_send
    if _original_send is not None:
        requests.Session.send = _original_send  # type: ignore[method-assign]
        _original_send = None
