"""The Slack channel: an incoming webhook, at most one message a second, alerts batched.

Slack rate-limits incoming webhooks to about one message per second and
answers 429 with ``Retry-After``; this channel spaces its posts, honours the
header, and puts every alert of an evaluation cycle into one message (up to
``max_per_message`` attachments). The webhook URL is a secret: it is never in
reprs, logs or error messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from instrument.alerting.cause import cause_line
from instrument.alerting.channels.base import DEFAULT_KINDS, DeliveryError, redact_url, summary
from instrument.alerting.channels.http import HTTPClient
from instrument.alerting.state import AlertEvent

__all__ = ["SlackChannel"]

_COLORS = {"low": "#439FE0", "medium": "warning", "high": "danger", "critical": "#8B0000"}


class SlackChannel:
    """Posts alert events to a Slack incoming webhook."""

    name = "slack"
    #: What its failures tell the user to check (a channel built in code may set its own).
    setting = "INSTRUMENT_SLACK_WEBHOOK_URL"
    kinds = DEFAULT_KINDS

    def __init__(self, webhook_url: str, *, http: HTTPClient | None = None,
                 min_interval: float = 1.0, max_per_message: int = 20,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._url = webhook_url
        self.http = http or HTTPClient(backoff=1.0, sleep=sleep)
        self.min_interval = min_interval
        self.max_per_message = max_per_message
        self._clock = clock
        self._sleep = sleep
        self._next_post = 0.0

    def __repr__(self) -> str:
        return f"SlackChannel(webhook_url={redact_url(self._url)!r})"

    def send(self, event: AlertEvent) -> None:
        self.send_batch([event])

    def send_batch(self, events: Sequence[AlertEvent]) -> None:
        for i in range(0, len(events), self.max_per_message):
            self._post(self.payload(events[i:i + self.max_per_message]))

    def _post(self, payload: dict[str, Any]) -> None:
        wait = self._next_post - self._clock()
        if wait > 0:
            self._sleep(wait)
        try:
            self.http.post_json(self._url, payload, setting=self.setting)
        except DeliveryError as exc:
            pause = exc.retry_after if exc.retry_after is not None else 0.0
            self._next_post = self._clock() + max(self.min_interval, pause)
            raise
        self._next_post = self._clock() + self.min_interval

    @staticmethod
    def payload(events: Sequence[AlertEvent]) -> dict[str, Any]:
        """The message: a headline plus one attachment per alert."""
        firing = sum(1 for e in events if e.firing)
        head = summary(events[0]) if len(events) == 1 else (
            f"{len(events)} alert notifications: {firing} firing,"
            f" {len(events) - firing} resolved")
        attachments = []
        for e in events:
            a = e.alert
            color = _COLORS[a.severity.value] if e.firing else "good"
            fields = [{"title": "Severity", "value": a.severity.value, "short": True},
                      {"title": "Alert id", "value": a.id, "short": True}]
            if "threshold" in a.metadata:
                fields.append({"title": "Condition", "value": a.metadata["threshold"],
                               "short": True})
            cause = cause_line(a.metadata)
            if cause:
                fields.append({"title": "Cause", "value": cause, "short": False})
            attachments.append({"color": color, "title": summary(e), "text": a.description,
                                "fields": fields, "ts": int(e.at)})
        return {"text": head, "attachments": attachments}
