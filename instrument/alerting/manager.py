"""The alert manager: evaluates the rules, saves the outcome, then delivers the outbox.

Each evaluation reads the metrics dict (``{'system': {...}, 'api': {...}, 'app':
{...}}``), steps every rule through the pure state machine in
:mod:`instrument.alerting.state`, writes the outcome (state, ``alerts`` rows,
history, outbox) in one SQLite transaction, then delivers the outbox. That
order is what lets a restart neither re-announce firing alerts nor lose pending
progress or a resolve.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from instrument.alerting.cause import cause_of
from instrument.alerting.channels.base import AlertChannel, CallableChannel
from instrument.alerting.config import (
    AlertSettings,
    build_channels,
    configured_rules,
    email_overrides,
)
from instrument.alerting.dispatch import Dispatcher, rows_for, snapshot
from instrument.alerting.rules import DEFAULT_RULE_NAMES, AlertRule, check
from instrument.alerting.state import (
    Alert,
    AlertStatus,
    Change,
    RuleState,
    acknowledge,
    step,
)
from instrument.alerting.store import AlertStore
from instrument.core.batch import iso_utc

__all__ = ["AlertManager", "MetricsProvider", "collector_metrics"]

log = logging.getLogger("instrument.alerts")
MetricsProvider = Callable[[], Mapping[str, Any]]
_HISTORY_DAYS = 30


def collector_metrics() -> Mapping[str, Any]:
    """The default metrics source: the kit's metrics collector, or nothing if unavailable."""
    try:
        from instrument.system.current import get_metrics_collector
    except ImportError:
        return {}
    return get_metrics_collector().get_current_metrics(window_minutes=5)


class AlertManager:
    """Evaluates rules every ``check_interval`` seconds in its own thread.

    ``metrics_provider`` and ``clock`` (epoch seconds) are injectable; other
    keywords override the ``INSTRUMENT_ALERT*``/seed environment variables.
    """

    def __init__(self, *, metrics_provider: MetricsProvider | None = None,
                 clock: Callable[[], float] = time.time, environ: Mapping[str, str] | None = None,
                 db_path: str | None = None, check_interval: float | None = None,
                 cooldown_period: float | None = None, default_rules: bool | None = None,
                 channels: Iterable[AlertChannel] = (),
                 email_config: Mapping[str, Any] | None = None, outage_tolerance: float = 3600.0,
                 **options: Any) -> None:
        given = {"alerts_db": db_path, "check_interval": check_interval,
                 "cooldown_period": cooldown_period}
        overrides = {k: v for k, v in given.items() if v is not None} | options
        if default_rules is not None:
            overrides["default_rules"] = DEFAULT_RULE_NAMES if default_rules else ()
        if email_config:
            overrides |= email_overrides(email_config)
        self.settings = AlertSettings.from_env(environ, **overrides)
        self.metrics_provider = metrics_provider or collector_metrics
        self.clock = clock
        self.outage_tolerance = outage_tolerance
        self.rules: dict[str, AlertRule] = configured_rules(self.settings)
        self._store = AlertStore(self.settings.alerts_db)
        self.dispatcher = Dispatcher(self._store, clock)
        for channel in (*build_channels(self.settings), *channels):
            self.dispatcher.add(channel)
        self._states: dict[str, RuleState] = {}
        self._token = uuid.uuid4().hex[:8]
        self._leader = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_eval: float | None = None
        self._next_sweep = 0.0
        self._errors = 0
        self._last_error: str | None = None
        ref = weakref.WeakMethod(self._after_fork)
        os.register_at_fork(after_in_child=lambda: (m := ref()) is not None and m())

    def _after_fork(self) -> None:
        """In a forked child: fresh locks, no thread, not the leader (the parent may be)."""
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = None
        self._leader = False

    @property
    def _owner(self) -> str:
        # The pid is part of the lease owner, so a forked child never shares the parent's lease.
        return f"{os.uname().nodename}:{os.getpid()}:{self._token}"

    def __repr__(self) -> str:
        return (f"AlertManager(db={self.settings.alerts_db!r}, rules={len(self.rules)},"
                f" channels={list(self.dispatcher.channels)}, running={self.running})")

    # -- rules and channels -----------------------------------------------------------------

    def add_rule(self, rule: AlertRule) -> None:
        """Add a rule; one with the same name is replaced and keeps its state."""
        with self._lock:
            self.rules[rule.name] = rule

    def remove_rule(self, name: str) -> bool:
        """Drop a rule; a firing alert of it is resolved (and notified) first."""
        with self._lock:
            rule = self.rules.pop(name, None)
            if rule is None:
                return False
            st, now = self._states.pop(name, None), self.clock()
            if st is not None:
                st.flapping = False
                self._persist([(rule, st, step(rule, st, False, now, ""))], now, deleted=[name])
        self._deliver()
        return True

    def add_channel(self, channel: AlertChannel) -> None:
        with self._lock:
            self.dispatcher.add(channel)

    def add_notification_handler(self, handler: Callable[[Alert], Any],
                                 name: str | None = None) -> None:
        """Call ``handler(alert)`` for firing, repeat and resolved notifications."""
        self.add_channel(CallableChannel(handler, name))

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(self, metrics: Mapping[str, Any] | None = None) -> list[tuple[str, Change]]:
        """Run one evaluation now and deliver what is due; returns what changed."""
        now = self.clock()
        if metrics is None:
            try:
                metrics = self.metrics_provider()
            except Exception as exc:
                self._note_error(f"metrics provider raised {type(exc).__name__}: {exc}")
                metrics = {}
        with self._lock:
            if not self._lead(now):
                return []
            records = []
            for rule in list(self.rules.values()):
                st = self._states.get(rule.name) or self._states.setdefault(
                    rule.name, RuleState(rule.name))
                met, value, error = check(rule, metrics) if rule.enabled else (False, None, None)
                st.value = value
                if met:  # what it points at stays that of the window that met the condition
                    st.cause = cause_of(getattr(rule.condition, "metric", None), metrics)
                changes = step(rule, st, met, now, uuid.uuid4().hex)
                if error != st.error:
                    changes.append(Change("no_data" if error else "data_ok", detail=error or ""))
                    st.error = error
                if changes:
                    records.append((rule, st, changes))
            self._persist(records, now)
            self._last_eval = now
            if now >= self._next_sweep:
                self._store.sweep(now - _HISTORY_DAYS * 86400)
                self._next_sweep = now + 3600
        self._deliver()
        self.dispatcher.refresh([a for a in self.active_alerts.values()])
        return [(rule.name, c) for rule, st, changes in records for c in changes]

    def _lead(self, now: float) -> bool:
        ours, previous = self._store.acquire_lease(
            self._owner, now, max(3 * self.settings.check_interval, 30.0))
        if not ours:
            self._leader = False
            return False
        if self._store.changed() or not self._leader:
            self._states = self._store.load_states()
            if previous is not None and now - previous > self.outage_tolerance:
                for st in self._states.values():
                    if st.state is AlertStatus.PENDING:
                        st.pending_since = now  # too long unwatched: pending starts over
        self._leader = True
        return True

    def _persist(self, records: list[tuple[AlertRule, RuleState, list[Change]]], now: float,
                 deleted: Iterable[str] = ()) -> None:
        states, alerts, history, outbox = rows_for(records, now, self.dispatcher.targets)
        if states or history:
            self._store.save(now, states, alerts, history, outbox, deleted)

    def _deliver(self) -> None:
        if self._leader:
            self.dispatcher.deliver()

    def _note_error(self, message: str) -> None:
        self._errors += 1
        self._last_error = message[:300]
        log.warning("alert evaluation: %s", message[:300])

    def acknowledge(self, alert_id: str, by: str | None = None) -> bool:
        """Acknowledge a firing alert (PagerDuty, webhook and log are told); False if none."""
        with self._lock:
            now = self.clock()
            if self._store.changed() or not self._leader:
                self._states = self._store.load_states()
            for name, st in self._states.items():
                rule = self.rules.get(name)
                if st.alert_id == alert_id and rule is not None:
                    changes = acknowledge(st, by, now)
                    self._persist([(rule, st, changes)] if changes else [], now)
                    break
            else:
                return False
        self._deliver()
        return bool(changes)

    # -- the thread -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start_monitoring(self) -> None:
        """Start evaluating every ``check_interval`` seconds (idempotent)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="instrument-alerts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.evaluate()
            except Exception as exc:  # the loop outlives any one bad evaluation
                self._note_error(f"evaluation failed: {type(exc).__name__}: {exc}")
            self._stop.wait(self.settings.check_interval)

    def stop_monitoring(self, timeout: float = 5.0) -> bool:
        """Stop the thread and hand the lease over; False if it did not stop in time."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return False
        with self._lock:
            if self._leader:
                self._store.release_lease(self._owner)
                self._leader = False
        return True

    def close(self) -> None:
        self.stop_monitoring()
        for channel in self.dispatcher.channels.values():
            http = getattr(channel, "http", None)
            if http is not None:
                http.close()
        self._store.close()

    # -- queries ----------------------------------------------------------------------------

    def _by_state(self, status: AlertStatus) -> dict[str, Alert]:
        now = self.clock()
        with self._lock:
            return {name: snapshot(self.rules[name], st, now)
                    for name, st in self._states.items()
                    if st.state is status and name in self.rules}

    @property
    def active_alerts(self) -> dict[str, Alert]:
        """Firing alerts by rule name."""
        return self._by_state(AlertStatus.FIRING)

    @property
    def pending_alerts(self) -> dict[str, Alert]:
        """Rules whose condition holds but not yet for ``threshold_duration``."""
        return self._by_state(AlertStatus.PENDING)

    def get_alert_history(self, limit: int = 100, rule: str | None = None,
                          alert_id: str | None = None) -> list[dict[str, Any]]:
        """Newest first: state changes, no-data errors, sent and failed notifications."""
        return self._store.history(limit=limit, rule=rule, alert_id=alert_id)

    def get_alerts(self, limit: int = 100, status: str | None = None) -> list[dict[str, Any]]:
        """Rows of the ``alerts`` table, newest first."""
        return self._store.alerts(limit=limit, status=status)

    def get_notifications(self, limit: int = 100, status: str | None = None,
                          channel: str | None = None) -> list[dict[str, Any]]:
        """The outbox: queued, sent and failed notifications (payloads are not returned)."""
        return self._store.notifications(limit=limit, status=status, channel=channel)

    def health(self) -> dict[str, Any]:
        """The alert manager's own health; contains no secrets."""
        return {
            "running": self.running, "leader": self._leader, "rules": len(self.rules),
            "firing": len(self.active_alerts), "pending": len(self.pending_alerts),
            "last_evaluation": None if self._last_eval is None else iso_utc(self._last_eval),
            "evaluation_errors": self._errors, "last_error": self._last_error,
            "channels": self.dispatcher.health(), "notifications": self._store.counts(),
        }
