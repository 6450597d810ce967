"""Framework-free request and response values, and the headers every dashboard response carries.

The dashboard is a pure function from :class:`Request` to :class:`Response`;
the WSGI, ASGI and standalone glue only translate. Keeping it that way lets the
same code answer inside a Flask worker, a uvicorn event loop and the
``instrument dashboard`` server, and lets tests call it without a socket.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

__all__ = [
    "CSP",
    "BadRequest",
    "Request",
    "Response",
    "json_response",
    "problem",
]

#: Nothing inline, nothing from elsewhere: scripts, styles and fetches come from the page's origin.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

_SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on the
    # page's own POSTs, and the CSRF check could no longer tell them from a foreign site's.
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)

_REASONS = {200: "OK", 201: "Created", 303: "See Other", 304: "Not Modified",
            400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
            429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}


class BadRequest(ValueError):
    """A parameter the client sent cannot be used; becomes a 400 with this message."""


@dataclass
class Request:
    """One HTTP request as the dashboard sees it: header names are lower case."""

    method: str
    path: str
    query_string: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    scheme: str = "http"
    root: str = ""  # where the app is mounted (WSGI SCRIPT_NAME, ASGI root_path)

    def __post_init__(self) -> None:
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; a repeated name is a client error, not a silent pick."""
        if self._query is None:
            parsed: dict[str, str] = {}
            try:
                pairs = parse_qsl(self.query_string, keep_blank_values=True,
                                  strict_parsing=False, max_num_fields=50)
            except ValueError as exc:
                raise BadRequest(f"Malformed query string: {exc}") from None
            for key, value in pairs:
                if key in parsed:
                    raise BadRequest(f"Parameter {key!r} given more than once.")
                parsed[key] = value
            self._query = parsed
        return self._query

    def cookie(self, name: str) -> str | None:
        raw = self.headers.get("cookie")
        if not raw:
            return None
        for part in raw.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value
        return None


@dataclass
class Response:
    """Status, headers and a complete body (dashboard responses are small)."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return _REASONS.get(self.status, "Unknown")

    @property
    def status_line(self) -> str:
        return f"{self.status} {self.reason}"

    def header_list(self) -> list[tuple[str, str]]:
        """Every header to send, security headers first, never cached unless the route said so."""
        out = [("Content-Type", self.content_type), ("Content-Length", str(len(self.body))),
               *_SECURITY_HEADERS]
        if not any(k.lower() == "cache-control" for k, _ in self.headers):
            out.append(("Cache-Control", "no-store"))
        out.extend(self.headers)
        return out


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _dumps(payload: Any) -> bytes:
    # "<", ">" and "&" escaped as \u00XX: a JSON body can never be read as markup.
    try:
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:  # NaN or infinity somewhere: JSON has no spelling for them
        text = json.dumps(_finite(payload), separators=(",", ":"), default=str)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode("utf-8")


def json_response(payload: Any, status: int = 200,
                  headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, _dumps(payload), "application/json", list(headers or ()))


def problem(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """A JSON error body: ``{"error": <reason>, "message": <what to fix>, "status": n}``."""
    reason = _REASONS.get(status, "Error")
    return json_response({"error": reason, "message": message, "status": status}, status,
                         headers)
