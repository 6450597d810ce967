"""The seed's start-up API: start collector, flusher and alert manager together, stop them together.

``initialize_monitoring_system(**config)`` takes the seed's keyword
configuration (``metrics={'collection_interval': 30, 'retention_days': 7}``,
``alerts={'check_interval': 60, 'cooldown_period': 1800}``,
``enable_email_alerts``, ``email_config``); anything not given comes from the
environment (``INSTRUMENT_*`` or the seed's ``METRICS_COLLECTION_INTERVAL``,
``METRICS_DB_PATH``, ``ALERT_CHECK_INTERVAL``, ``ENABLE_EMAIL_ALERTS``, ...).
``start_monitoring_with_config()`` is the same from the environment alone.
Both are idempotent: a second call with the same configuration changes
nothing, and never starts a second thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from instrument.config import ConfigError, Settings
from instrument.core.runtime import ON, runtime
from instrument.system.collector import MetricsCollector
from instrument.system.current import get_metrics_collector

__all__ = [
    "MonitoringSystem",
    "initialize_monitoring_system",
    "monitoring_status",
    "start_monitoring_with_config",
    "stop_monitoring",
]

log = logging.getLogger("instrument")

#: ``metrics={...}`` keys that are spelled differently from the Settings fields.
_METRICS_ALIASES = {"db_path": "metrics_db", "metrics_db_path": "metrics_db"}


@dataclass
class MonitoringSystem:
    """What start-up started: the kit's settings, the collector and the alert manager."""

    settings: Settings
    collector: MetricsCollector
    alert_manager: Any = None

    @property
    def running(self) -> bool:
        manager = self.alert_manager
        return (runtime.state == ON and self.collector.running
                and (manager is None or bool(manager.running)))


_lock = threading.RLock()
_system: MonitoringSystem | None = None
_alert_options: dict[str, Any] | None = None


def _settings_overrides(metrics: Mapping[str, Any] | None,
                        options: Mapping[str, Any]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(Settings)}
    out: dict[str, Any] = {}
    for key, value in {**(metrics or {}), **options}.items():
        field = _METRICS_ALIASES.get(key, key)
        if field not in known:
            raise ConfigError(f"Unknown metrics option {key!r}; known: {sorted(known)}.")
        out[field] = value
    return out


def _configure_kit(environ: Mapping[str, str] | None, overrides: dict[str, Any]) -> Settings:
    current = runtime.settings
    if runtime.state == ON and current is not None:
        if all(getattr(current, k) == v for k, v in overrides.items()):
            return current
        # Keep what was configured in code before (backends, ...), change what was asked.
        kept = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
        return runtime.configure(None, **{**kept, **overrides})
    return runtime.configure(environ, **overrides)


def _start_alerts(alerts: Mapping[str, Any] | None, enable_email_alerts: bool | None,
                  email_config: Mapping[str, Any] | None,
                  environ: Mapping[str, str] | None) -> Any:
    global _alert_options
    try:
        from instrument import alerting
    except ImportError:  # alerting not installed in this build: metrics only
        return None
    options: dict[str, Any] = dict(alerts or {})
    if environ is not None:
        options["environ"] = environ
    if email_config and enable_email_alerts is not False:
        options["email_config"] = dict(email_config)
    elif enable_email_alerts is not None:
        options["enable_email"] = bool(enable_email_alerts)
    if options and options != _alert_options:
        # Options the running manager was not built with: rebuild it (firing and pending
        # state lives in its store, so nothing is re-announced or forgotten).
        alerting.reset_alert_manager()
    manager = alerting.get_alert_manager(**options)
    _alert_options = options
    manager.start_monitoring()
    return manager


def initialize_monitoring_system(*, metrics: Mapping[str, Any] | None = None,
                                 alerts: Mapping[str, Any] | None = None,
                                 enable_email_alerts: bool | None = None,
                                 email_config: Mapping[str, Any] | None = None,
                                 enable_alerts: bool = True,
                                 environ: Mapping[str, str] | None = None,
                                 **options: Any) -> MonitoringSystem:
    """Start (or reconfigure) the kit, the metrics collector and the alert manager.

    ``metrics`` and extra keywords are :class:`~instrument.config.Settings` fields
    (``collection_interval``, ``retention_days``, ``db_path``/``metrics_db``,
    ``flush_interval``, ``disk_path``...); ``alerts`` are the alert manager's
    options. A bad value raises :class:`~instrument.config.ConfigError` before
    anything is started.
    """
    global _system
    overrides = _settings_overrides(metrics, options)
    Settings.from_env(environ, **overrides)  # validate first: fail before changing anything
    with _lock:
        settings = _configure_kit(environ, overrides)
        collector = get_metrics_collector()
        manager = None
        if settings.enabled:
            collector.start_collection()
            if enable_alerts:
                manager = _start_alerts(alerts, enable_email_alerts, email_config, environ)
        _system = MonitoringSystem(settings, collector, manager)
        log.info("instrument: monitoring started (collection every %gs, store %s, alerts %s)",
                 settings.collection_interval, settings.metrics_db,
                 "on" if manager is not None else "off")
        return _system


def start_monitoring_with_config(environ: Mapping[str, str] | None = None) -> MonitoringSystem:
    """Start everything from the environment; returns the running system if already started."""
    with _lock:
        system = _system
        if system is not None and system.running:
            return system
        return initialize_monitoring_system(environ=environ)


def stop_monitoring(timeout: float = 5.0) -> bool:
    """Stop the alert manager and the collector, flush what is buffered, stop the flusher.

    Returns False if the flush did not finish within ``timeout``.
    """
    global _system
    with _lock:
        system, _system = _system, None
        if system is not None and system.alert_manager is not None:
            system.alert_manager.stop_monitoring(timeout)
        get_metrics_collector().stop_collection(timeout)
        return runtime.shutdown(timeout)


def monitoring_status() -> dict[str, Any]:
    """Whether each part runs, and the kit's own health (for a health endpoint)."""
    with _lock:
        system = _system
    collector = get_metrics_collector()
    manager = system.alert_manager if system is not None else None
    return {
        "running": bool(system is not None and system.running),
        "collector": {"running": collector.running, "cycles": collector.cycles,
                      "readings_in_memory": len(collector.system_metrics),
                      "last_cycle_ms": collector.last_cycle_seconds * 1000.0},
        "alert_manager": None if manager is None else {"running": bool(manager.running)},
        "kit": runtime.stats(),
    }
