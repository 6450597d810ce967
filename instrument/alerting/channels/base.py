"""What every alert channel shares: the Protocol, the error it raises, and event helpers.

A channel is anything with a ``name`` and ``send(event)``. It raises
:class:`DeliveryError` (or any exception) when the receiver did not accept the
notification; the dispatcher then retries with backoff unless the error says it
is permanent. A channel may also offer ``send_batch(events)`` (one message for
several alerts) and ``kinds`` (the event kinds it wants).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from instrument.alerting.state import Alert, AlertEvent, AlertSeverity

__all__ = [
    "DEFAULT_KINDS",
    "AlertChannel",
    "CallableChannel",
    "DeliveryError",
    "alert_annotations",
    "alert_labels",
    "event_from_dict",
    "event_to_dict",
    "redact_url",
    "summary",
]

DEFAULT_KINDS = frozenset({"firing", "repeat", "resolved"})
log = logging.getLogger("instrument.alerts")


@runtime_checkable
class AlertChannel(Protocol):
    """Delivers alert events somewhere; raise when the receiver did not accept one."""

    name: str

    def send(self, event: AlertEvent) -> None: ...


class DeliveryError(Exception):
    """A receiver refused or could not be reached.

    ``permanent``: retrying cannot help (e.g. HTTP 400/401/404, SMTP 5xx).
    ``retry_after``: seconds the receiver asked us to wait (HTTP 429).
    Messages never contain secrets (URLs, keys, passwords).
    """

    def __init__(self, message: str, *, permanent: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class CallableChannel:
    """Wraps a user's ``handler(alert)`` (the seed's ``add_notification_handler``)."""

    def __init__(self, handler: Callable[[Alert], Any], name: str | None = None,
                 kinds: frozenset[str] = DEFAULT_KINDS) -> None:
        self.handler = handler
        self.name = name or f"handler:{getattr(handler, '__qualname__', type(handler).__name__)}"
        self.kinds = kinds

    def __repr__(self) -> str:
        return f"CallableChannel(name={self.name!r})"

    def send(self, event: AlertEvent) -> None:
        event.alert.metadata["event"] = event.kind  # firing, repeat or resolved
        self.handler(event.alert)


def redact_url(url: str) -> str:
    """``https://hooks.slack.com/services/T0/B0/XX`` -> ``https://hooks.slack.com/…``."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def summary(event: AlertEvent) -> str:
    """One line a human reads first: ``[FIRING] high_cpu (high): CPU usage above 80%``."""
    a = event.alert
    state = {"repeat": "STILL FIRING", "acknowledged": "ACKNOWLEDGED"}.get(
        event.kind, event.kind.upper())
    flap = " (flapping)" if event.flapping else ""
    value = a.metadata.get("value")
    shown = f" [value {value:g}]" if isinstance(value, (int, float)) else ""
    return f"[{state}] {a.name} ({a.severity.value}){flap}: {a.description}{shown}"


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def event_to_dict(event: AlertEvent) -> dict[str, Any]:
    """The JSON the outbox stores; :func:`event_from_dict` rebuilds the event."""
    a = event.alert
    return {
        "kind": event.kind, "at": event.at, "flapping": event.flapping,
        "alert": {
            "id": a.id, "name": a.name, "description": a.description,
            "severity": a.severity.value, "status": a.status,
            "created_at": a.created_at.isoformat(), "updated_at": a.updated_at.isoformat(),
            "resolved_at": a.resolved_at and a.resolved_at.isoformat(),
            "acknowledged_at": a.acknowledged_at and a.acknowledged_at.isoformat(),
            "acknowledged_by": a.acknowledged_by, "metadata": dict(a.metadata),
        },
    }


def event_from_dict(data: dict[str, Any]) -> AlertEvent:
    a = data["alert"]
    alert = Alert(
        id=a["id"], name=a["name"], description=a["description"],
        severity=AlertSeverity(a["severity"]), status=a["status"],
        created_at=datetime.fromisoformat(a["created_at"]),
        updated_at=datetime.fromisoformat(a["updated_at"]),
        resolved_at=_dt(a.get("resolved_at")), acknowledged_at=_dt(a.get("acknowledged_at")),
        acknowledged_by=a.get("acknowledged_by"), metadata=dict(a.get("metadata") or {}),
    )
    return AlertEvent(kind=data["kind"], alert=alert, at=float(data["at"]),
                      flapping=bool(data.get("flapping")))


def alert_labels(alert: Alert) -> dict[str, str]:
    """Identity labels of an alert (Alertmanager-style): alertname, severity, the rule's own."""
    out = {"alertname": alert.name, "severity": alert.severity.value}
    for key, value in (alert.metadata.get("labels") or {}).items():
        clean = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in str(key))
        if clean and not clean[0].isdigit():
            out[clean] = str(value)
    return out


def alert_annotations(event: AlertEvent) -> dict[str, str]:
    a = event.alert
    out = {"summary": a.description, "alert_id": a.id, "event": event.kind}
    for key in ("value", "threshold", "error"):
        if a.metadata.get(key) is not None:
            out[key] = str(a.metadata[key])
    cause = a.metadata.get("cause") or {}
    if cause.get("route"):
        out["route"] = f"{cause['route'].get('method', '')} {cause['route']['route']}".strip()
        out["route_link"] = "/monitoring" + cause["route"]["link"]
    if cause.get("error_group"):
        out["error_group"] = str(cause["error_group"].get("type"))
        out["error_group_link"] = "/monitoring" + cause["error_group"]["link"]
    if event.flapping:
        out["flapping"] = "true"
    if a.acknowledged_by:
        out["acknowledged_by"] = a.acknowledged_by
    return out
