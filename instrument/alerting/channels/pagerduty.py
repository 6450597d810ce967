"""The PagerDuty channel: Events API v2 trigger / acknowledge / resolve with a dedup key.

The alert id is the ``dedup_key``, so the trigger, the acknowledgement and the
resolve all land on one incident, and a flapping alert (which keeps its id)
does not open a new incident each cycle. Repeats are not sent: the incident
stays open by itself. The routing key is a secret and never shown.
"""

from __future__ import annotations

import socket

from instrument.alerting.channels.base import redact_url
from instrument.alerting.channels.http import HTTPClient
from instrument.alerting.state import AlertEvent

__all__ = ["PagerDutyChannel"]

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_SEVERITY = {"low": "info", "medium": "warning", "high": "error", "critical": "critical"}
_ACTION = {"firing": "trigger", "acknowledged": "acknowledge", "resolved": "resolve"}


class PagerDutyChannel:
    """Sends one Events v2 event per alert event."""

    name = "pagerduty"
    #: What its failures tell the user to check (a channel built in code may set its own):
    #: the URL when PagerDuty is not reached or answers 404, the key when it answers
    #: 400/401/403 (Events v2 answers 400 to an invalid routing key).
    setting = "INSTRUMENT_PAGERDUTY_URL"
    refused_setting = "INSTRUMENT_PAGERDUTY_ROUTING_KEY"
    kinds = frozenset(_ACTION)

    def __init__(self, routing_key: str, *, url: str = EVENTS_URL, source: str | None = None,
                 http: HTTPClient | None = None) -> None:
        self._routing_key = routing_key
        self.url = url
        self.source = source or socket.gethostname()
        self.http = http or HTTPClient()

    def __repr__(self) -> str:
        return f"PagerDutyChannel(url={redact_url(self.url)!r}, routing_key='***')"

    def send(self, event: AlertEvent) -> None:
        self.http.post_json(self.url, self.payload(event), setting=self.setting,
                            refused_setting=self.refused_setting, hide=(self._routing_key,))

    def payload(self, event: AlertEvent) -> dict[str, object]:
        a = event.alert
        body: dict[str, object] = {"routing_key": self._routing_key,
                                   "event_action": _ACTION[event.kind], "dedup_key": a.id}
        if event.kind == "firing":
            body["payload"] = {
                "summary": f"{a.name}: {a.description}"[:1024],
                "source": self.source,
                "severity": _SEVERITY[a.severity.value],
                "timestamp": a.created_at.isoformat(),
                "component": a.name,
                "custom_details": {k: v for k, v in a.metadata.items() if k != "event"},
            }
        return body
