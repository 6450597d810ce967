"""One ``requests.Session`` helper for the HTTP channels: timeouts, retries, Retry-After.

Retry policy (the one Slack, PagerDuty and Alertmanager document): 5xx,
timeouts, connection errors and 429 are retried with exponential backoff; 429's
``Retry-After`` is honoured; any other 4xx is the caller's mistake and is not
retried. A wait longer than ``max_wait`` is not slept here: the error carries
``retry_after`` and the dispatcher's outbox tries again later, so one slow
receiver cannot hold the alert thread for minutes.

Error messages name the host only: webhook URLs carry secrets.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import requests

from instrument.alerting.channels.base import DeliveryError, redact_url
from instrument.core.suppress import suppressed

__all__ = ["HTTPClient", "parse_retry_after"]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


_REQUEST_LINE = re.compile(r'"([A-Z]+) (\S+) (HTTP/[0-9.]+)"')


class _HidePaths(logging.Filter):
    """Cuts the path from urllib3's DEBUG request lines logged during the kit's own posts.

    Slack and webhook URLs carry their token in the path; only records made while
    the kit's suppress flag is set (alert delivery) are touched, never the app's.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if suppressed.get():
            message = record.getMessage()
            cut = _REQUEST_LINE.sub(lambda m: f'"{m.group(1)} /… {m.group(3)}"', message)
            if cut != message:
                record.msg, record.args = cut, ()
        return True


_hide_paths = _HidePaths()


class HTTPClient:
    """POSTs JSON with the kit's retry policy; one instance (and Session) per channel."""

    def __init__(self, *, timeout: float = 10.0, retries: int = 2, backoff: float = 0.5,
                 max_backoff: float = 8.0, max_wait: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep,
                 session: requests.Session | None = None) -> None:
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_wait = max_wait
        self.sleep = sleep
        self.session = session or requests.Session()
        urllib3_log = logging.getLogger("urllib3.connectionpool")
        if _hide_paths not in urllib3_log.filters:
            urllib3_log.addFilter(_hide_paths)
        self.session.headers["User-Agent"] = "instrument-kit alerts"

    def __repr__(self) -> str:
        return f"HTTPClient(timeout={self.timeout}, retries={self.retries})"

    def close(self) -> None:
        self.session.close()

    def post_json(self, url: str, payload: Any, headers: Mapping[str, str] | None = None, *,
                  setting: str | None = None, refused_setting: str | None = None,
                  hide: Sequence[str] = ()) -> requests.Response:
        """POST ``payload``; return the 2xx response or raise :class:`DeliveryError`.

        ``setting`` names what the user configured the receiver with (such as
        ``INSTRUMENT_SLACK_WEBHOOK_URL``): the failures configuration can cause (a 4xx,
        no connection, a certificate, a timeout) say which setting to look at.
        ``refused_setting`` is named instead for 400, 401 and 403, when the receiver
        was reached but refused what it was sent (PagerDuty's routing key).
        ``hide``: secrets in the payload, cut from a receiver's answer that echoes them.
        A 5xx or 429 is the receiver's trouble, not configuration: retried, no hint.
        """
        where = redact_url(url)
        check = f"; check {setting}" if setting else ""
        error = DeliveryError(f"no attempt made to {where}")
        for attempt in range(self.retries + 1):
            retry_after: float | None = None
            try:
                resp = self.session.post(url, json=payload, headers=dict(headers or {}),
                                         timeout=self.timeout)
            except requests.Timeout:
                slow = f"{check} or" if check else ";"
                error = DeliveryError(f"timeout after {self.timeout:g}s posting to {where}"
                                      f"{slow} raise INSTRUMENT_ALERT_HTTP_TIMEOUT")
            except requests.exceptions.SSLError:
                error = DeliveryError(
                    f"TLS certificate of {where} did not verify{check} (the host name must"
                    " match its certificate), or set REQUESTS_CA_BUNDLE to the CA that signed it")
            except requests.RequestException as exc:
                # str(exc) may contain the full URL, so only the type and a fixed phrase are kept.
                error = DeliveryError(f"{type(exc).__name__} posting to {where}"
                                      f"{_unreachable(exc)}{check}")
            else:
                status = resp.status_code
                if 200 <= status < 300:
                    return resp
                body = resp.text[:200].replace(url, where)
                for secret in hide:
                    body = body.replace(secret, "***") if secret else body
                resp.close()
                if status == 429 or status >= 500:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    error = DeliveryError(f"HTTP {status} from {where}: {body}",
                                          retry_after=retry_after)
                else:
                    name = refused_setting if status in (400, 401, 403) and refused_setting \
                        else setting
                    hint = f"; check {name}" if name else ""
                    raise DeliveryError(f"HTTP {status} from {where}: {body}{hint}",
                                        permanent=True)
            if attempt == self.retries:
                break
            delay = retry_after if retry_after is not None else \
                min(self.max_backoff, self.backoff * 2 ** attempt)
            if delay > self.max_wait:
                break
            self.sleep(delay)
        raise error


def _unreachable(exc: requests.RequestException) -> str:
    """`` (connection refused)`` or `` (host name does not resolve)``: what the user checks."""
    text = str(exc)
    if any(m in text for m in ("NameResolutionError", "Failed to resolve", "not known",
                               "failure in name resolution")):
        return " (host name does not resolve)"
    if "Connection refused" in text or "ConnectionRefusedError" in text:
        return " (connection refused)"
    return ""
