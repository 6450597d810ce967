"""The dashboard as one callable: access control, the page, its assets, login and the API.

Paths (relative to where the app is mounted): ``/monitoring`` (the page),
``/monitoring/static/<asset>``, ``/monitoring/login``, ``/monitoring/logout``
and ``/api/v1/monitoring/<endpoint>``. Until a token or public access is
configured every one of them answers 404.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import threading
import time
from importlib import resources
from urllib.parse import parse_qs

from instrument.dashboard._http import BadRequest, Request, Response, json_response, problem
from instrument.dashboard._paths import API_PREFIX, HEALTH, OFF_MESSAGE, PAGE
from instrument.dashboard.api import MonitoringAPI
from instrument.dashboard.auth import Auth, same_origin

__all__ = ["Dashboard"]

log = logging.getLogger("instrument")

_ASSETS = {"app.js": "text/javascript; charset=utf-8", "pages.js": "text/javascript; charset=utf-8",
           "app.css": "text/css; charset=utf-8",
           "favicon.svg": "image/svg+xml"}
_LOGIN_LIMIT = 10  # failed logins per minute before the form refuses for the rest of the minute

_LOGIN_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in - instrument</title>
<link rel="icon" href="{root}/monitoring/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{root}/monitoring/static/app.css"></head>
<body class="login"><main class="login-box">
<h1>instrument</h1><p>This dashboard needs the token set in
<code>INSTRUMENT_DASHBOARD_TOKEN</code>.</p>
<form method="post" action="{root}/monitoring/login">
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button></form>
<p class="error" role="alert">{error}</p></main></body></html>
"""


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static").joinpath(name).read_bytes()


class Dashboard:
    """``Dashboard(...)(request) -> Response``; build one per app with :meth:`from_settings`."""

    def __init__(self, metrics_db: str, *, alerts_db: str | None = None,
                 token: str | None = None, public: bool = False, in_process: bool = False,
                 collection_interval: float = 30.0, health_public: bool = True) -> None:
        self.auth = Auth(token=token or None, public=public)
        self.health_public = health_public
        self.api = MonitoringAPI(metrics_db, alerts_db=alerts_db, in_process=in_process,
                                 collection_interval=collection_interval)
        self._index = _asset("index.html").decode("utf-8")
        self._assets = {name: _asset(name) for name in _ASSETS}
        self._etags = {name: '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
                       for name, data in self._assets.items()}
        self._failures: list[float] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"Dashboard(db={self.api.db.path!r}, enabled={self.auth.enabled},"
                f" public={self.auth.public})")

    @property
    def enabled(self) -> bool:
        return self.auth.enabled

    def close(self) -> None:
        self.api.close()

    def log_status(self, where: str = PAGE, off_level: int = logging.INFO) -> None:
        """One start-up line saying whether the dashboard is on, and how to turn it on."""
        if not self.enabled:
            log.log(off_level, OFF_MESSAGE, where)
        elif self.auth.token and len(self.auth.token) < 16:
            log.warning("instrument: INSTRUMENT_DASHBOARD_TOKEN is shorter than 16 characters;"
                        " use a long random secret.")
        else:
            log.info("instrument: dashboard at %s (%s)", where,
                     "public" if self.auth.public else "token required")

    # -- dispatch -------------------------------------------------------------------------
    def __call__(self, request: Request) -> Response:
        try:
            return self._dispatch(request)
        except Exception:  # details go to the log, never to the client
            log.exception("instrument dashboard: %s %s failed", request.method, request.path)
            return _text(500, "Internal Server Error")

    def _dispatch(self, request: Request) -> Response:
        path = request.path
        is_api = path == API_PREFIX or path.startswith(API_PREFIX + "/")
        if not self.enabled:
            if path == HEALTH and self.health_public and request.method in ("GET", "HEAD"):
                return self._verdict(request)
            return problem(404, "Not found.") if is_api else _text(404, "Not Found")
        if is_api:
            return self._api(request, path[len(API_PREFIX) + 1:])
        if path in (PAGE, PAGE + "/"):
            return self._page(request)
        rest = path[len(PAGE) + 1:]
        if rest.startswith("static/") and rest[7:] in self._assets:
            return self._static(request, rest[7:])
        if rest == "login":
            return self._login(request)
        if rest == "logout" and request.method == "POST":
            access = self.auth.check(request)
            if not self.auth.csrf_ok(request, access):
                return _text(403, "Cross-site request refused.")
            return _redirect(request.root + PAGE + "/login",
                             [self.auth.clear_session_cookie(request)])
        return _text(404, "Not Found")

    def _api(self, request: Request, sub: str) -> Response:
        access = self.auth.check(request)
        if (not access.allowed and sub == "health" and self.health_public
                and request.method in ("GET", "HEAD")):
            return self._verdict(request)
        if not access.allowed:
            return problem(401, "Send 'Authorization: Bearer <INSTRUMENT_DASHBOARD_TOKEN>' or"
                                " sign in at /monitoring.", [("WWW-Authenticate", "Bearer")])
        if request.method not in ("GET", "HEAD") and not self.auth.csrf_ok(request, access):
            return problem(403, "Cross-site request refused: send the X-CSRF-Token header with"
                                " the value of the instrument_csrf cookie.")
        return self.api.handle(request, sub)

    def _verdict(self, request: Request) -> Response:
        """Health's verdict and status code alone: what load balancers need, nothing to read."""
        full = self.api.handle(request, "health")
        verdict = json.loads(full.body).get("status", "failing")
        return json_response({"status": verdict}, full.status)

    def _page(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _text(405, "Method Not Allowed")
        access = self.auth.check(request)
        if not access.allowed:
            return self._login_form(request, 401, "")
        _, cookie = self.auth.csrf_cookie(request)
        root = html.escape(request.root, quote=True)
        headers = [("Set-Cookie", cookie)]
        if access.via == "cookie":
            headers.append(("X-Instrument-Session", "cookie"))
        body = self._index.replace("{{root}}", root).replace(
            "{{session}}", "cookie" if access.via == "cookie" else access.via)
        return Response(200, body.encode("utf-8"), "text/html; charset=utf-8", headers)

    def _static(self, request: Request, name: str) -> Response:
        etag = self._etags[name]
        headers = [("ETag", etag), ("Cache-Control", "no-cache")]
        if request.headers.get("if-none-match") == etag:
            return Response(304, b"", _ASSETS[name], headers)
        return Response(200, self._assets[name], _ASSETS[name], headers)

    def _login(self, request: Request) -> Response:
        if request.method in ("GET", "HEAD"):
            if self.auth.check(request).allowed:
                return _redirect(request.root + PAGE)
            link = _link_token(request) if self.auth.token else None
            if link is not None:
                # A sign-in link (``instrument demo`` prints one): like the form, but the token
                # rides in the URL, so it lands in browser history; fine on loopback.
                return self._sign_in(request, link)
            return self._login_form(request, 200, "")
        if request.method != "POST":
            return _text(405, "Method Not Allowed")
        if not self.auth.token:
            return _redirect(request.root + PAGE)
        if not same_origin(request):
            return _text(403, "Cross-site request refused.")
        try:
            fields = parse_qs(request.body.decode("utf-8", "replace"), max_num_fields=10)
        except ValueError:
            return self._login_form(request, 400, "That form could not be read.")
        return self._sign_in(request, (fields.get("token") or [""])[0])

    def _sign_in(self, request: Request, submitted: str) -> Response:
        now = time.monotonic()
        with self._lock:
            self._failures = [t for t in self._failures if now - t < 60]
            if len(self._failures) >= _LOGIN_LIMIT:
                return self._login_form(request, 429, "Too many attempts; wait a minute.")
        if not self.auth.login(submitted):
            with self._lock:
                self._failures.append(now)
            return self._login_form(request, 401, "That token is not right.")
        return _redirect(request.root + PAGE, [self.auth.session_cookie(request)])

    def _login_form(self, request: Request, status: int, error: str) -> Response:
        if not self.auth.token:  # public is off and there is no token: nothing to sign in to
            return _text(404, "Not Found")
        body = _LOGIN_FORM.format(root=html.escape(request.root, quote=True),
                                  error=html.escape(error))
        return Response(status, body.encode("utf-8"), "text/html; charset=utf-8")


def _link_token(request: Request) -> str | None:
    try:
        return request.query.get("token")
    except BadRequest:  # a malformed or repeated parameter: show the form instead
        return None


def _text(status: int, text: str) -> Response:
    return Response(status, text.encode("utf-8"), "text/plain; charset=utf-8")


def _redirect(location: str, cookies: list[str] | None = None) -> Response:
    headers = [("Location", location)] + [("Set-Cookie", c) for c in cookies or ()]
    return Response(303, b"", "text/plain; charset=utf-8", headers)

