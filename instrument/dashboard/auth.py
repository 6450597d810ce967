"""Who may see the dashboard: a bearer token, a login cookie, or an explicit public flag.

- Neither ``INSTRUMENT_DASHBOARD_TOKEN`` nor ``INSTRUMENT_DASHBOARD_PUBLIC=true``:
  every dashboard path answers 404, as if the mount did not exist.
- A token: API calls need ``Authorization: Bearer <token>`` or the session cookie
  the login form sets (``health`` without either answers only its verdict and
  status code, for load balancers). The cookie holds an expiry and an HMAC keyed with the
  token, never the token itself, and is ``HttpOnly; SameSite=Strict``.
- Public: anyone who can reach the port sees the page (meant for loopback).

State-changing requests (the acknowledge POST, logout) that ride on a cookie or
on public access must carry ``X-CSRF-Token`` equal to the ``instrument_csrf``
cookie (double submit; a cross-site page can neither read the cookie nor send a
custom header without a CORS preflight we never grant), and a cross-origin
``Origin`` or ``Sec-Fetch-Site`` is refused outright. Bearer requests carry no
ambient credential, so they need no CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from instrument.dashboard._http import Request

__all__ = ["CSRF_COOKIE", "CSRF_HEADER", "SESSION_COOKIE", "Access", "Auth"]

SESSION_COOKIE = "instrument_session"
CSRF_COOKIE = "instrument_csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Access:
    """The outcome of checking one request."""

    allowed: bool
    via: str = ""  # "bearer", "cookie", "public" or "" when refused


@dataclass
class Auth:
    """The access policy of one mounted dashboard; ``token`` never appears in its repr."""

    token: str | None = field(default=None, repr=False)
    public: bool = False
    session_seconds: int = SESSION_SECONDS

    @property
    def enabled(self) -> bool:
        return bool(self.token) or self.public

    # -- checking ---------------------------------------------------------------
    def check(self, request: Request, now: float | None = None) -> Access:
        if self.token:
            header = request.headers.get("authorization", "")
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer" and value and _same(value.strip(), self.token):
                return Access(True, "bearer")
            cookie = request.cookie(SESSION_COOKIE)
            if cookie and self._valid_session(cookie, time.time() if now is None else now):
                return Access(True, "cookie")
            if self.public:
                return Access(True, "public")
            return Access(False)
        if self.public:
            return Access(True, "public")
        return Access(False)

    def login(self, submitted: str) -> bool:
        """Whether a token typed into the login form is the configured one."""
        return bool(self.token) and _same(submitted.strip(), self.token or "")

    def csrf_ok(self, request: Request, access: Access) -> bool:
        """Whether a state-changing request comes from the dashboard's own page."""
        if access.via == "bearer":
            return True
        if not same_origin(request):
            return False
        cookie = request.cookie(CSRF_COOKIE)
        header = request.headers.get(CSRF_HEADER, "")
        return bool(cookie and header) and _same(cookie or "", header)

    # -- cookies ------------------------------------------------------------------
    def session_cookie(self, request: Request, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.session_seconds)
        value = f"{expires}.{self._sign(str(expires))}"
        return _cookie(SESSION_COOKIE, value, request, http_only=True,
                       max_age=self.session_seconds)

    @staticmethod
    def clear_session_cookie(request: Request) -> str:
        return _cookie(SESSION_COOKIE, "", request, http_only=True, max_age=0)

    @staticmethod
    def csrf_cookie(request: Request) -> tuple[str, str]:
        """The page's CSRF value (reusing the browser's) and a Set-Cookie header for it."""
        value = request.cookie(CSRF_COOKIE)
        if not value or len(value) != 43 or not value.replace("-", "").replace("_", "").isalnum():
            value = secrets.token_urlsafe(32)
        return value, _cookie(CSRF_COOKIE, value, request, http_only=False, max_age=None)

    def _sign(self, message: str) -> str:
        secret = (self.token or "").encode("utf-8")
        key = hashlib.sha256(b"instrument-dashboard-session:" + secret).digest()
        return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()

    def _valid_session(self, cookie: str, now: float) -> bool:
        expires, _, signature = cookie.partition(".")
        if not expires.isdigit() or not signature:
            return False
        if int(expires) < now:
            return False
        return _same(signature, self._sign(expires))


def same_origin(request: Request) -> bool:
    """False when the browser says the request came from another site or origin.

    ``Sec-Fetch-Site`` (sent by every current browser) decides when present;
    otherwise an ``Origin`` must name this host. Clients that send neither (curl,
    scripts) are not browsers riding on a victim's cookie and pass.
    """
    site = request.headers.get("sec-fetch-site")
    if site:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin:
        host = request.headers.get("host", "")
        return urlsplit(origin).netloc == host  # the scheme may differ behind a TLS proxy
    return True


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


def _cookie(name: str, value: str, request: Request, *, http_only: bool,
            max_age: int | None) -> str:
    parts = [f"{name}={value}", "Path=/", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if http_only:
        parts.append("HttpOnly")
    if request.scheme == "https":
        parts.append("Secure")
    return "; ".join(parts)
