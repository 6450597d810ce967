"""Alerting: rules over the kit's metrics, a durable state machine, notifications never lost.

The seed's API (``get_alert_manager``, ``AlertRule``, ``AlertSeverity``,
``start_monitoring``, ``add_rule``, ``add_notification_handler``, ...). Inside:
rules and their conditions (``rules``), the pure state machine (``state``), the
SQLite store of state, history and outbox (``store``, ``schema``), delivery with
retries (``dispatch``), settings from the environment (``config``), the manager
that ties them together (``manager``) and one module per channel (``channels/``).
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from instrument.alerting.manager import AlertManager
from instrument.alerting.rules import AlertRule, Threshold
from instrument.alerting.state import Alert, AlertSeverity, AlertStatus

__all__ = ["Alert", "AlertManager", "AlertRule", "AlertSeverity", "AlertStatus", "Threshold",
           "get_alert_manager", "reset_alert_manager"]

_manager: AlertManager | None = None
_manager_lock = threading.Lock()


def get_alert_manager(**options: Any) -> AlertManager:
    """The process-wide manager, built from the environment on first use."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = AlertManager(**options)
            atexit.register(_manager.stop_monitoring, 2.0)
        return _manager


def reset_alert_manager() -> None:
    """Stop and forget the process-wide manager (tests, reconfiguration)."""
    global _manager
    with _manager_lock:
        manager, _manager = _manager, None
    if manager is not None:
        atexit.unregister(manager.stop_monitoring)
        manager.close()

