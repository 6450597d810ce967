"""The Prometheus Alertmanager channel: ``POST /api/v2/alerts`` the way Prometheus does.

Prometheus re-sends every firing alert on a short interval with ``endsAt`` a
few intervals ahead, so Alertmanager resolves it by itself if the sender dies,
and sends resolved alerts with their real ``endsAt``. This channel does the
same: ``send`` posts each notification, and :meth:`refresh`, which the alert
manager calls every ``resend_interval``, re-posts all firing alerts with a
rolling ``endsAt`` of ``now + 4 * resend_interval``. Grouping, inhibition,
silences and routing are then Alertmanager's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from instrument.alerting.channels.base import alert_annotations, alert_labels, redact_url
from instrument.alerting.channels.http import HTTPClient
from instrument.alerting.state import Alert, AlertEvent

__all__ = ["AlertmanagerChannel"]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


class AlertmanagerChannel:
    """Posts alerts to an Alertmanager (``url`` is its base, e.g. ``http://am:9093``)."""

    name = "alertmanager"
    #: What its failures tell the user to check (a channel built in code may set its own).
    setting = "INSTRUMENT_ALERTMANAGER_URL"
    kinds = frozenset({"firing", "repeat", "resolved"})

    def __init__(self, url: str, *, resend_interval: float = 60.0,
                 generator_url: str | None = None, http: HTTPClient | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._url = url.rstrip("/") + "/api/v2/alerts"
        self.resend_interval = resend_interval
        self.generator_url = generator_url
        self.http = http or HTTPClient()
        self._clock = clock

    def __repr__(self) -> str:
        return f"AlertmanagerChannel(url={redact_url(self._url)!r})"

    def send(self, event: AlertEvent) -> None:
        self.send_batch([event])

    def send_batch(self, events: Sequence[AlertEvent]) -> None:
        now = self._clock()
        self.http.post_json(self._url, [self._alert(e.alert, e, now) for e in events],
                            setting=self.setting)

    def refresh(self, alerts: Sequence[Alert]) -> None:
        """Re-post the firing alerts so Alertmanager keeps them active."""
        if alerts:
            now = self._clock()
            self.http.post_json(self._url, [self._alert(a, None, now) for a in alerts],
                                setting=self.setting)

    def _alert(self, alert: Alert, event: AlertEvent | None, now: float) -> dict[str, Any]:
        resolved = event is not None and not event.firing
        if resolved and alert.resolved_at is not None:
            ends = alert.resolved_at.isoformat()
        else:
            ends = _iso(now + 4 * self.resend_interval)
        notes = alert_annotations(event or AlertEvent("firing", alert, now))
        body: dict[str, Any] = {"labels": alert_labels(alert), "annotations": notes,
                                "startsAt": alert.created_at.isoformat(), "endsAt": ends}
        if self.generator_url:
            body["generatorURL"] = self.generator_url
        return body
