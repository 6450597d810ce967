"""Delivers the outbox: each queued notification to its channel, with backoff, never silently.

A notification is marked sent only after its channel returned without raising.
A failure is retried with exponential backoff (or after the receiver's
``Retry-After``) unless the channel says it is permanent; after
``max_attempts`` it is given up. Every failure lands in the alert history and
in :meth:`Dispatcher.health`, and is logged without secrets. All channel I/O
runs under the kit's suppress flag so it is never recorded as the app's own
traffic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from instrument.alerting.channels.base import (
    DEFAULT_KINDS,
    AlertChannel,
    DeliveryError,
    event_from_dict,
    event_to_dict,
)
from instrument.alerting.rules import AlertRule, Threshold
from instrument.alerting.state import (
    Alert,
    AlertEvent,
    AlertSeverity,
    AlertStatus,
    Change,
    RuleState,
)
from instrument.alerting.store import AlertStore, History, Outgoing
from instrument.core.batch import iso_utc
from instrument.core.suppress import suppressed

__all__ = ["ChannelHealth", "Dispatcher", "rows_for", "snapshot"]

log = logging.getLogger("instrument.alerts")


@dataclass
class ChannelHealth:
    """Counters for one channel, as shown by ``AlertManager.health()``."""

    sent: int = 0
    failures: int = 0
    given_up: int = 0
    last_sent: str | None = None
    last_failure: str | None = None
    last_error: str | None = None


class Dispatcher:
    """Owns the channels and sends what the store's outbox says is due."""

    def __init__(self, store: AlertStore, clock: Callable[[], float], *, max_attempts: int = 8,
                 base_backoff: float = 15.0, max_backoff: float = 900.0) -> None:
        self.store = store
        self.clock = clock
        self.max_attempts = max_attempts
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.channels: dict[str, AlertChannel] = {}
        self._health: dict[str, ChannelHealth] = {}
        self._refreshed: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, channel: AlertChannel) -> None:
        if channel.name in self.channels:
            raise ValueError(f"A channel named {channel.name!r} is already registered.")
        self.channels[channel.name] = channel
        self._health.setdefault(channel.name, ChannelHealth())

    def targets(self, kind: str) -> list[str]:
        """Names of the channels that want events of this kind."""
        return [name for name, ch in self.channels.items()
                if kind in getattr(ch, "kinds", DEFAULT_KINDS)]

    def health(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(h) for name, h in self._health.items()}

    def deliver(self) -> int:
        """Send every due notification; returns how many were accepted."""
        with self._lock:
            now = self.clock()
            rows = self.store.due(now)
            groups: dict[str, list[Outgoing]] = {}
            for row in rows:
                groups.setdefault(row.channel, []).append(row)
            token = suppressed.set(True)
            try:
                return sum(self._deliver(name, items, now) for name, items in groups.items())
            finally:
                suppressed.reset(token)

    def _deliver(self, name: str, items: list[Outgoing], now: float) -> int:
        channel = self.channels.get(name)
        if channel is None:
            self._failed(name, items, DeliveryError(f"channel {name!r} is not configured"), now)
            return 0
        batch = getattr(channel, "send_batch", None)
        chunks = [items] if batch is not None and len(items) > 1 else [[i] for i in items]
        accepted = 0
        for chunk in chunks:
            events = [event_from_dict(i.payload) for i in chunk]
            try:
                if len(events) > 1 and batch is not None:
                    batch(events)
                else:
                    channel.send(events[0])
            except Exception as exc:  # any failure of any channel is recorded, never raised
                self._failed(name, chunk, exc, self.clock())
                break  # the rest stay queued, in order, for the next round
            else:
                accepted += len(chunk)
                self._sent(name, chunk, self.clock())
        return accepted

    def _sent(self, name: str, items: Sequence[Outgoing], now: float) -> None:
        health = self._health.setdefault(name, ChannelHealth())
        health.sent += len(items)
        health.last_sent = iso_utc(now)
        history: list[History] = [(now, i.rule, i.alert_id, "notification_sent",
                                   f"{name} {i.kind}") for i in items]
        self.store.mark_sent([i.id for i in items], now, history)

    def _failed(self, name: str, items: Sequence[Outgoing], exc: BaseException,
                now: float) -> None:
        message = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
        permanent = isinstance(exc, DeliveryError) and exc.permanent
        retry_after = exc.retry_after if isinstance(exc, DeliveryError) else None
        health = self._health.setdefault(name, ChannelHealth())
        health.failures += len(items)
        health.last_failure = iso_utc(now)
        health.last_error = message[:300]
        updates, history = [], []
        for i in items:
            attempts = i.attempts + 1
            final = permanent or attempts >= self.max_attempts
            delay = retry_after if retry_after is not None else \
                min(self.max_backoff, self.base_backoff * 2 ** (attempts - 1))
            if final:
                health.given_up += 1
                outcome = "permanent, not retried" if permanent else f"gave up after {attempts}"
            else:
                outcome = f"attempt {attempts}, retry in {delay:g}s"
            updates.append((i.id, final, now + delay, message[:500]))
            history.append((now, i.rule, i.alert_id, "notification_failed",
                            f"{name} {i.kind}: {message[:300]} ({outcome})"))
        log.warning("alert notification via %s failed: %s (%d notification(s))",
                    name, message[:300], len(items))
        self.store.mark_failed(updates, now, history)

    def refresh(self, alerts: Sequence[Alert]) -> None:
        """Re-post firing alerts to channels that keep state (Alertmanager's rolling endsAt)."""
        now = self.clock()
        for name, channel in self.channels.items():
            refresh = getattr(channel, "refresh", None)
            interval = getattr(channel, "resend_interval", None)
            if refresh is None or interval is None or not alerts:
                continue
            if now - self._refreshed.get(name, float("-inf")) < interval:
                continue
            token = suppressed.set(True)
            try:
                refresh(alerts)
            except Exception as exc:
                message = str(exc) if isinstance(exc, DeliveryError) else type(exc).__name__
                health = self._health.setdefault(name, ChannelHealth())
                health.failures += 1
                health.last_failure = iso_utc(now)
                health.last_error = message[:300]
                self.store.mark_failed([], now, [(now, a.name, a.id, "notification_failed",
                                                  f"{name} refresh: {message[:300]}")
                                                 for a in alerts])
                log.warning("alert refresh via %s failed: %s", name, message[:300])
            else:
                self._refreshed[name] = now
            finally:
                suppressed.reset(token)


Record = tuple[AlertRule, RuleState, list[Change]]
OutboxRow = tuple[str, str, str, "str | None", dict[str, Any]]
_NO_ROW = frozenset({"pending", "cancelled", "no_data", "data_ok"})


def snapshot(rule: AlertRule, st: RuleState, now: float) -> Alert:
    """The :class:`Alert` a rule's state stands for right now."""
    meta: dict[str, Any] = {"rule": rule.name, "value": st.value, "flapping": st.flapping,
                            "labels": dict(rule.labels), "error": st.error}
    if isinstance(rule.condition, Threshold):
        meta["threshold"] = str(rule.condition)
    if st.cause:
        meta["cause"] = st.cause
    firing = st.state is AlertStatus.FIRING
    return Alert(
        id=st.alert_id or "", name=rule.name, description=rule.description,
        severity=AlertSeverity(rule.severity), status="firing" if firing else "resolved",
        created_at=_utc(st.fired_at or now), updated_at=_utc(now),
        resolved_at=None if firing or st.resolved_at is None else _utc(st.resolved_at),
        acknowledged_at=None if st.acknowledged_at is None else _utc(st.acknowledged_at),
        acknowledged_by=st.acknowledged_by, metadata=meta)


def rows_for(records: Sequence[Record], now: float, targets: Callable[[str], list[str]]
             ) -> tuple[list[RuleState], list[Alert], list[History], list[OutboxRow]]:
    """What one evaluation writes: states, ``alerts`` rows, history lines, outbox rows."""
    states, alerts, history, outbox = [], [], [], []
    for rule, st, changes in records:
        states.append(st)
        alert = snapshot(rule, st, now) if st.alert_id else None
        if alert is not None and any(c.kind not in _NO_ROW for c in changes):
            alerts.append(alert)
        for c in changes:
            if not c.notify:
                aid = st.alert_id if c.kind not in ("pending", "cancelled") else None
                history.append((now, rule.name, aid, c.kind, c.detail))
            elif alert is not None:
                payload = event_to_dict(AlertEvent(c.kind, alert, now, flapping=st.flapping))
                outbox += [(name, c.kind, rule.name, st.alert_id, payload)
                           for name in targets(c.kind)]
    return states, alerts, history, outbox


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)
