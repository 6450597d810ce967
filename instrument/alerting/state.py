"""The alert state machine, kept pure: no clock, no I/O, no threads.

Every decision the alert manager makes (when to start pending, when to fire,
when to page again, when to stay quiet because an alert flaps) happens in
:func:`step`, a function of the rule, the rule's state, the condition's outcome
and the time. That makes it testable with plain numbers and lets the manager
persist the state after each step, which is what keeps restarts honest.

States follow Prometheus: inactive -> pending (condition true, waiting
``threshold_duration``) -> firing -> resolved. What receivers were last told is
kept apart from the state (``notified``), so notifications are the difference
between what receivers should believe and what they were told.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Protocol

__all__ = [
    "NOTIFY_KINDS",
    "Alert",
    "AlertEvent",
    "AlertSeverity",
    "AlertStatus",
    "Change",
    "RuleState",
    "StepParams",
    "acknowledge",
    "step",
    "utc",
]


class AlertSeverity(str, Enum):
    """How bad an alert is; channels map it to their own levels."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class AlertStatus(str, Enum):
    """Where a rule is in its life cycle."""

    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


#: Change kinds that reach channels (the rest only go to the history).
NOTIFY_KINDS = frozenset({"firing", "repeat", "resolved", "acknowledged"})


def utc(ts: float | None) -> datetime | None:
    """Epoch seconds as an aware UTC datetime (what :class:`Alert` exposes)."""
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)


@dataclass
class Alert:
    """One alert episode as users and channels see it (a row of the ``alerts`` table)."""

    id: str
    name: str
    description: str
    severity: AlertSeverity
    status: str
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class AlertEvent:
    """What a channel is asked to deliver: an alert and why (``kind``) at time ``at``."""

    kind: str
    alert: Alert
    at: float
    flapping: bool = False

    @property
    def firing(self) -> bool:
        return self.kind in ("firing", "repeat", "acknowledged")


@dataclass(slots=True)
class Change:
    """One thing that happened to a rule in a step.

    Changes with ``notify`` set are notifications to queue for the channels; the
    others are state changes for the history.
    """

    kind: str
    notify: bool = False
    detail: str = ""


@dataclass(slots=True)
class RuleState:
    """Everything the manager must remember about one rule across restarts."""

    rule: str
    state: AlertStatus = AlertStatus.INACTIVE
    alert_id: str | None = None
    pending_since: float | None = None
    fired_at: float | None = None
    resolved_at: float | None = None
    notified: str | None = None  # "firing" | "resolved" | None: what receivers believe
    last_notified: float | None = None
    fire_starts: list[float] = field(default_factory=list)
    flapping: bool = False
    last_change: float | None = None  # last move between firing and not firing
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    value: float | None = None
    error: str | None = None
    cause: dict[str, Any] | None = None  # route and error group when last met (alerting.cause)


class StepParams(Protocol):
    """The rule fields :func:`step` reads (an ``AlertRule`` satisfies it)."""

    threshold_duration: float
    cooldown_period: float
    no_data: str
    flap_window: float
    flap_threshold: int
    send_resolved: bool


def step(rule: StepParams, st: RuleState, met: bool | None, now: float,
         new_id: str) -> list[Change]:
    """Advance ``st`` by one evaluation; ``met`` is None when there was no data.

    No data follows the rule's policy: ``ok`` counts as false, ``alerting`` as
    true, ``keep`` leaves the state exactly as it was (pending does not progress).
    ``new_id`` names the alert if this step starts a new episode.
    """
    if met is None:
        if rule.no_data == "ok":
            met = False
        elif rule.no_data == "alerting":
            met = True
        else:
            return []
    changes: list[Change] = []
    if met:
        if st.state in (AlertStatus.INACTIVE, AlertStatus.RESOLVED):
            st.state = AlertStatus.PENDING
            st.pending_since = now
            changes.append(Change("pending"))
        since = now if st.pending_since is None else st.pending_since
        if st.state is AlertStatus.PENDING and now - since >= rule.threshold_duration:
            _fire(rule, st, now, new_id, changes)
    elif st.state is AlertStatus.PENDING:
        st.state = AlertStatus.INACTIVE
        st.pending_since = None
        changes.append(Change("cancelled", detail="condition cleared before threshold_duration"))
    elif st.state is AlertStatus.FIRING:
        st.state = AlertStatus.RESOLVED
        st.resolved_at = now
        st.last_change = now
        changes.append(Change("resolved"))
    if st.flapping and st.last_change is not None and now - st.last_change >= rule.flap_window:
        st.flapping = False
        changes.append(Change("flap_end", detail=f"stable for {rule.flap_window:g}s"))
    _reconcile(rule, st, now, changes)
    return changes


def _fire(rule: StepParams, st: RuleState, now: float, new_id: str,
          changes: list[Change]) -> None:
    st.state = AlertStatus.FIRING
    st.pending_since = None
    st.last_change = now
    if not (st.flapping and st.alert_id):
        # A flapping alert keeps its episode (and dedup key): receivers still believe it fires.
        st.alert_id = new_id
        st.fired_at = now
        st.acknowledged_at = st.acknowledged_by = None
    st.resolved_at = None
    st.fire_starts = [t for t in st.fire_starts if now - t < rule.flap_window]
    st.fire_starts.append(now)
    if not st.flapping and rule.flap_threshold > 0 and \
            len(st.fire_starts) >= rule.flap_threshold:
        st.flapping = True
        changes.append(Change("flapping", detail=(
            f"fired {len(st.fire_starts)} times within {rule.flap_window:g}s;"
            " notifications paused until stable")))
    changes.append(Change("firing"))


def _reconcile(rule: StepParams, st: RuleState, now: float, changes: list[Change]) -> None:
    """Turn the gap between the state and what receivers were told into notifications."""
    if st.state is AlertStatus.FIRING or st.flapping:
        if st.notified != "firing":
            st.notified = "firing"
            st.last_notified = now
            changes.append(Change("firing", notify=True))
        elif st.state is AlertStatus.FIRING and rule.cooldown_period > 0 and \
                st.last_notified is not None and now - st.last_notified >= rule.cooldown_period:
            st.last_notified = now
            changes.append(Change("repeat", notify=True))
    elif st.notified == "firing":
        st.notified = "resolved"
        st.last_notified = now
        if rule.send_resolved:
            changes.append(Change("resolved", notify=True))


def acknowledge(st: RuleState, by: str | None, now: float) -> list[Change]:
    """Mark the firing episode acknowledged; a no-op for anything not firing."""
    if st.state is not AlertStatus.FIRING or st.acknowledged_at is not None:
        return []
    st.acknowledged_at = now
    st.acknowledged_by = by
    detail = f"by {by}" if by else ""
    return [Change("acknowledged", detail=detail), Change("acknowledged", notify=True)]
