"""The seed README's collector, start-up and "Adding Custom Metrics" snippets, run as written.

Each test body starts with the snippet verbatim (``monitoring.`` renamed
``instrument.``), then checks what it produced. They run against the real
machine and a real SQLite file in the test's temporary directory.
"""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import instrument
from instrument import startup
from instrument.core.runtime import ON, runtime
from instrument.metrics_collector import reset_metrics_collector


@pytest.fixture(autouse=True)
def _stopped_monitoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Alert state in a temporary file; everything the snippets start is stopped afterwards."""
    monkeypatch.setenv("INSTRUMENT_ALERTS_DB", str(tmp_path / "alerts.db"))
    yield
    startup.stop_monitoring(5.0)
    reset_metrics_collector()
    from instrument.alerting import reset_alert_manager

    reset_alert_manager()


def test_quick_start_starts_collector_flusher_and_alerts(db_path: Path) -> None:
    """Quick Start: start_monitoring_with_config() runs everything from the environment."""
    from instrument.startup import start_monitoring_with_config
    start_monitoring_with_config()

    from instrument.alerting import get_alert_manager
    from instrument.metrics_collector import get_metrics_collector

    assert runtime.state == ON and runtime.flusher is not None and runtime.flusher.alive
    assert get_metrics_collector().running and get_alert_manager().running
    assert instrument.flush(5)
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT count(*) FROM system_metrics").fetchone()[0] >= 1
    conn.close()


def test_metrics_collector_snippet() -> None:
    """MetricsCollector: start, then recent readings and a 24-hour summary."""
    from instrument.metrics_collector import get_metrics_collector

    collector = get_metrics_collector()
    collector.start_collection()

    # Get recent metrics
    metrics = collector.get_recent_system_metrics(minutes=60)
    summary = collector.get_metrics_summary(hours=24)

    assert len(metrics) >= 1
    assert 0.0 <= metrics[-1].cpu_percent <= 100.0
    assert 0.0 <= metrics[-1].memory_percent <= 100.0
    assert summary["period_hours"] == 24
    assert summary["api"]["request_count"] == 0 and summary["endpoints"] == []


def test_startup_manager_snippet_configures_email_alerts() -> None:
    """Startup Manager: the seed's email_config reaches the alert manager's email channel."""
    from instrument.startup import initialize_monitoring_system

    initialize_monitoring_system(
        enable_email_alerts=True,
        email_config={
            'smtp_server': 'smtp.gmail.com',
            'smtp_port': 587,
            'username': 'alerts@company.com',
            'password': 'app_password',
            'from_email': 'alerts@company.com',
            'to_emails': ['admin@company.com']
        }
    )

    from instrument.alerting import get_alert_manager

    settings = get_alert_manager().settings
    assert settings.enable_email and settings.smtp_server == "smtp.gmail.com"
    assert settings.smtp_port == 587 and settings.alert_to_emails == ("admin@company.com",)
    assert settings.alert_from_email == "alerts@company.com"
    assert "email" in get_alert_manager().dispatcher.channels
    assert startup.monitoring_status()["running"]


def test_programmatic_configuration_snippet() -> None:
    """Programmatic Configuration: metrics and alerts dictionaries are applied."""
    from instrument.startup import initialize_monitoring_system

    config = {
        'metrics': {
            'collection_interval': 30,
            'retention_days': 7
        },
        'alerts': {
            'check_interval': 60,
            'cooldown_period': 1800
        }
    }

    initialize_monitoring_system(**config)

    from instrument.alerting import get_alert_manager

    assert runtime.settings is not None
    assert (runtime.settings.collection_interval, runtime.settings.retention_days) == (30.0, 7)
    assert runtime.backends[0].retention_days == 7
    manager = get_alert_manager()
    assert (manager.settings.check_interval, manager.settings.cooldown_period) == (60, 1800)


def test_troubleshooting_snippet_reports_running(capsys: pytest.CaptureFixture[str]) -> None:
    """Troubleshooting "Metrics Not Collecting": prints that it runs and how many readings."""
    startup.start_monitoring_with_config()

    from instrument.metrics_collector import get_metrics_collector

    collector = get_metrics_collector()
    print(f"Running: {collector.running}")
    print(f"Recent metrics: {len(collector.system_metrics)}")

    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Running: True"
    assert out[1].startswith("Recent metrics: ") and int(out[1].split(": ")[1]) >= 1


def test_adding_custom_metrics_snippet(db_path: Path) -> None:
    """Adding Custom Metrics: the ApplicationMetrics fields are stored and readable by name."""
    with warnings.catch_warnings():  # datetime.utcnow() is deprecated from Python 3.12 on
        warnings.simplefilter("ignore", DeprecationWarning)

        from datetime import datetime

        from instrument.metrics_collector import ApplicationMetrics, get_metrics_collector

        collector = get_metrics_collector()

        # Record custom application metrics
        app_metrics = ApplicationMetrics(
            timestamp=datetime.utcnow(),
            active_fine_tuning_jobs=5,
            completed_evaluations=120,
            total_api_calls=1500,
            cache_hit_rate=0.85,
            database_connections=10,
            queue_size=25
        )

        collector._store_app_metrics(app_metrics)

    assert instrument.flush(5)
    conn = sqlite3.connect(db_path)
    stored = dict(conn.execute("SELECT name, value FROM app_metrics WHERE kind = 'gauge'"))
    conn.close()
    assert stored == {"active_fine_tuning_jobs": 5.0, "completed_evaluations": 120.0,
                      "total_api_calls": 1500.0, "cache_hit_rate": 0.85,
                      "database_connections": 10.0, "queue_size": 25.0}
    app = collector.get_current_metrics()["app"]
    assert app["queue_size"] == 25.0 and app["cache_hit_rate"] == 0.85
    assert list(collector.app_metrics) == [app_metrics]
