"""The generic webhook channel: JSON shaped like Alertmanager's webhook payload.

Receivers that already understand Alertmanager webhooks (``version``,
``status``, ``alerts[]`` with ``labels``, ``annotations``, ``startsAt``,
``endsAt``) can take these too; ``event`` says firing, repeat, resolved or
acknowledged. The URL and any headers (tokens) stay out of reprs and errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from instrument.alerting.channels.base import alert_annotations, alert_labels, redact_url
from instrument.alerting.channels.http import HTTPClient
from instrument.alerting.state import AlertEvent

__all__ = ["WebhookChannel", "webhook_payload"]


class WebhookChannel:
    """POSTs a batch of alert events as one JSON document."""

    kinds = frozenset({"firing", "repeat", "resolved", "acknowledged"})
    #: What its failures tell the user to check (a channel built in code may set its own).
    setting = "INSTRUMENT_ALERT_WEBHOOK_URL"

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None,
                 http: HTTPClient | None = None, name: str = "webhook") -> None:
        self._url = url
        self._headers = dict(headers or {})
        self.http = http or HTTPClient()
        self.name = name

    def __repr__(self) -> str:
        return f"WebhookChannel(name={self.name!r}, url={redact_url(self._url)!r})"

    def send(self, event: AlertEvent) -> None:
        self.send_batch([event])

    def send_batch(self, events: Sequence[AlertEvent]) -> None:
        self.http.post_json(self._url, webhook_payload(events), self._headers,
                            setting=self.setting)


def webhook_payload(events: Sequence[AlertEvent]) -> dict[str, Any]:
    alerts = []
    for e in events:
        a = e.alert
        alerts.append({
            "status": "firing" if e.firing else "resolved",
            "event": e.kind,
            "id": a.id,
            "labels": alert_labels(a),
            "annotations": alert_annotations(e),
            "startsAt": a.created_at.isoformat(),
            "endsAt": a.resolved_at.isoformat() if a.resolved_at and not e.firing else None,
            "acknowledgedAt": a.acknowledged_at.isoformat() if a.acknowledged_at else None,
            "flapping": e.flapping,
        })
    status = "firing" if any(e.firing for e in events) else "resolved"
    return {"version": "1", "receiver": "instrument", "status": status, "alerts": alerts}
