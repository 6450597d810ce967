"""A custom alert rule and a custom notification handler, as in the seed's contributing guide.

Run: ``python examples/custom_alerts.py``: it records a queue size above the threshold,
evaluates once, and prints the notification the handler received.
"""

from __future__ import annotations

from typing import Any

from instrument.alerting import AlertRule, AlertSeverity, get_alert_manager

received: list[Any] = []


def queue_backing_up(metrics: dict[str, Any]) -> bool:
    """Fire when the background queue holds more than 100 jobs."""
    return metrics.get("app", {}).get("queue_size", 0) > 100


def notify(alert: Any) -> None:
    """Send anywhere: PagerDuty, Teams, a chat bot... here we keep and print it."""
    received.append(alert)
    print(f"Custom notification: {alert.name} - {alert.description}")


def main() -> list[Any]:
    manager = get_alert_manager()
    manager.add_rule(AlertRule(
        name="high_queue_size",
        description="Background queue is backing up",
        severity=AlertSeverity.MEDIUM,
        condition=queue_backing_up,
        threshold_duration=0,   # fire at the first evaluation, for the example
        cooldown_period=1800,
    ))
    manager.add_notification_handler(notify)
    manager.evaluate({"system": {}, "api": {}, "app": {"queue_size": 250}})
    return received


if __name__ == "__main__":
    main()
