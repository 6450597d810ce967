"""The demo's alerting: the real AlertManager, tuned so an incident fits in seconds.

The default rules look at five-minute windows and need the condition for minutes,
which is right for production and useless in a 20-second demo. So the demo adds
one rule of its own, :func:`demo_rule` (error rate above 20 % for 2 s), feeds the
manager API figures over the last :data:`WINDOW` seconds of this run's stored
requests (:class:`Signals`), evaluates every :data:`CHECK_INTERVAL` seconds, and
switches off ``system_down`` (no traffic for 15 minutes, which ``--no-traffic``
would eventually be). Everything else is the manager as deployed: durable state
in ``alerts.db``, the log channel, and email/Slack/webhook channels when the
environment configures them. :class:`Watcher` prints the transitions as the
manager writes them to its history.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from instrument.alerting import (
    AlertManager,
    AlertRule,
    AlertSeverity,
    Threshold,
    get_alert_manager,
)
from instrument.core.batch import iso_utc

__all__ = ["CHECK_INTERVAL", "RULE", "WINDOW", "Signals", "Watcher", "demo_rule", "start_alerts"]

RULE = "demo_error_rate"
WINDOW = 3.0
CHECK_INTERVAL = 0.5
THRESHOLD = 20.0
FOR_SECONDS = 2.0


def demo_rule() -> AlertRule:
    """Error rate above 20 % for 2 s; no repeats and no flap damping, so every run shows both."""
    return AlertRule(
        RULE, f"API error rate above {THRESHOLD:g}% for {FOR_SECONDS:g}s (demo rule)",
        AlertSeverity.HIGH, Threshold("api.error_rate_percent", ">", THRESHOLD),
        threshold_duration=FOR_SECONDS, cooldown_period=0, flap_threshold=0, no_data="ok",
        labels={"source": "instrument-demo"})


class Signals:
    """The metrics dict the rules read: system and app from the collector, API over seconds."""

    def __init__(self, db: str, pid: int, collector: Any) -> None:
        from instrument.storage.queries import open_readonly

        self._conn = open_readonly(db)
        self._lock = threading.Lock()
        self.pid = pid
        self.collector = collector
        self.last_api: dict[str, Any] = {}

    def api(self) -> dict[str, Any]:
        since = iso_utc(time.time() - WINDOW)
        with self._lock:
            count, errors, avg = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(error_count), 0), AVG(response_time_ms)"
                " FROM api_metrics WHERE timestamp >= ? AND pid = ?", (since, self.pid)).fetchone()
        return {"request_count": count, "error_count": errors,
                "error_rate_percent": 100.0 * errors / count if count else 0.0,
                "avg_response_time_ms": avg, "requests_per_second": count / WINDOW,
                "window_seconds": WINDOW}

    def metrics(self) -> dict[str, Any]:
        readings = self.collector.system_metrics
        system = readings[-1] if readings else self.collector.collect_system_metrics()
        self.last_api = self.api()
        return {"system": system.to_dict(), "api": self.last_api,
                "app": self.collector.get_app_metrics()}

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def start_alerts(alerts_db: str, signals: Signals) -> AlertManager:
    """The process's alert manager on ``alerts_db`` with the demo rule, evaluating already."""
    manager = get_alert_manager(metrics_provider=signals.metrics, db_path=alerts_db,
                                check_interval=CHECK_INTERVAL)
    manager.remove_rule("system_down")
    rule = demo_rule()
    rule.send_resolved = manager.settings.send_resolved
    manager.add_rule(rule)
    manager.start_monitoring()
    return manager


_SHOWN = {"pending": "PENDING", "firing": "FIRING", "resolved": "RESOLVED",
          "cancelled": "cancelled", "flapping": "flapping", "notification_sent": "sent",
          "notification_failed": "FAILED to send"}


class Watcher:
    """Reads the manager's history a few times a second and reports each new entry once."""

    def __init__(self, manager: AlertManager, say: Callable[[str], None], started: float,
                 signals: Signals) -> None:
        self.manager = manager
        self.say = say
        self.started = started  # time.time() of the traffic start
        self.signals = signals
        self.events: list[tuple[float, str, str, str]] = []  # (seconds, rule, event, detail)
        self._seen = {self._key(r) for r in manager.get_alert_history(limit=500)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-alert-watch", daemon=True)

    @staticmethod
    def _key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["timestamp"], row["rule"], row["event"], row["detail"])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.poll()

    def poll(self) -> None:
        rows = self.manager.get_alert_history(limit=100)
        for row in reversed(rows):  # oldest first
            key = self._key(row)
            if key in self._seen or row["event"] not in _SHOWN:
                continue
            self._seen.add(key)
            self._report(row)

    def _report(self, row: dict[str, Any]) -> None:
        from datetime import datetime, timezone

        ts = datetime.fromisoformat(row["timestamp"]).replace(tzinfo=timezone.utc).timestamp()
        at = max(0.0, ts - self.started)
        event, rule, detail = row["event"], row["rule"], row["detail"] or ""
        self.events.append((at, rule, event, detail))
        if rule != RULE and event in ("pending", "cancelled"):
            return  # default rules (high CPU under the load...) need minutes: summary only
        if event.startswith("notification_"):
            channel, _, rest = detail.partition(" ")
            self.say(f"  alert   {at:5.1f}s  {rule}: {rest} notification {_SHOWN[event]}"
                     f" via the {channel} channel")
            return
        note = detail
        if rule == RULE and event in ("pending", "firing", "resolved"):
            api = self.signals.last_api
            rate = api.get("error_rate_percent")
            if rate is not None:
                note = (f"error rate {rate:.0f}% over the last {WINDOW:g}s"
                        f" (rule: > {THRESHOLD:g}% for {FOR_SECONDS:g}s)")
        self.say(f"  alert   {at:5.1f}s  {rule}: {_SHOWN[event]}" + (f"  {note}" if note else ""))
