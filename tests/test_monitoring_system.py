"""The seed's monitoring API: the metrics collector, the start-up manager, the benchmarks.

Run as the seed says: ``python -m pytest tests/test_monitoring_system.py::TestMetricsCollector -v``.
Each area is one class (``TestMetricsCollector``, ``TestStartupManager``,
``TestMonitoringPerformance``; the alerting tests add ``TestAlertManager``);
the fixtures below are shared by all of them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import Client

import instrument
from instrument import metrics_collector, startup
from instrument.config import ConfigError
from instrument.core.runtime import ON, runtime
from instrument.flask import Instrument
from instrument.metrics_collector import (
    MetricsCollector,
    SystemMetrics,
    get_metrics_collector,
    reset_metrics_collector,
)
from instrument.testing import MemoryBackend
from tests.test_collector_system import FakePsutil

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _stopped_monitoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Alert state in a temporary file; collector, alert manager and kit stopped afterwards."""
    monkeypatch.setenv("INSTRUMENT_ALERTS_DB", str(tmp_path / "alerts.db"))
    yield
    startup.stop_monitoring(5.0)
    reset_metrics_collector()
    while _made:
        _made.pop().close()
    try:
        from instrument.alerting import reset_alert_manager
    except ImportError:
        pass
    else:
        reset_alert_manager()


_made: list[MetricsCollector] = []


def make(**options: Any) -> MetricsCollector:
    """A collector reading FakePsutil unless told otherwise; closed after the test."""
    options.setdefault("source", FakePsutil())
    collector = MetricsCollector(**options)
    _made.append(collector)
    return collector


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


def collector_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "instrument-collector")


def flask_app() -> Flask:
    app = Flask(__name__)
    Instrument(app)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return "x" * item_id

    @app.get("/fail")
    def fail() -> tuple[str, int]:
        return "boom", 503

    return app


class TestMetricsCollector:
    """Readings, history, application metrics, current metrics and summaries."""

    def test_fixed_readings_land_as_exact_rows(self, db_path: Path) -> None:
        """One cycle with a fixed source writes exactly those values to system_metrics."""
        instrument.configure(metrics_db=str(db_path))
        collector = make(disk_path="/data")
        reading = collector.collect_once()
        assert instrument.flush(5)
        (row,) = rows(db_path, "SELECT timestamp, cpu_percent, memory_percent, memory_used_mb,"
                      " memory_available_mb, disk_usage_percent, disk_free_gb, network_bytes_sent,"
                      " network_bytes_recv, active_connections, process_rss_mb,"
                      " process_threads, pid FROM system_metrics")
        assert row[1:] == (12.5, 40.0, 2048.0, 3072.0, 55.5, 10.0, 1000, 2000, 2, 50.0, 4,
                           os.getpid())
        stored = datetime.fromisoformat(row[0]).replace(tzinfo=timezone.utc)
        assert abs(stored - reading.timestamp) <= timedelta(microseconds=2)
        assert collector.system_metrics[-1] is reading

    def test_collection_runs_every_interval_until_stopped(self, db_path: Path) -> None:
        """start_collection reads at once, then every interval; stop_collection ends it."""
        instrument.configure(metrics_db=str(db_path), flush_interval=0.05)
        collector = make(interval=0.05)
        assert collector.start_collection() is True
        assert len(collector.system_metrics) == 1  # the first reading is synchronous
        assert collector.running
        assert wait_for(lambda: len(collector.system_metrics) >= 4)
        collector.stop_collection()
        assert not collector.running
        taken = len(collector.system_metrics)
        time.sleep(0.15)
        assert len(collector.system_metrics) == taken
        assert instrument.flush(5)
        assert rows(db_path, "SELECT count(*) FROM system_metrics")[0][0] == taken

    def test_starting_twice_runs_one_thread(self) -> None:
        """A second start_collection is harmless: still one collector thread."""
        collector = make(interval=60)
        collector.start_collection()
        collector.start_collection()
        assert collector_threads() == 1
        collector.stop_collection()
        assert wait_for(lambda: collector_threads() == 0)

    def test_history_in_memory_is_bounded(self) -> None:
        """system_metrics keeps only the newest ``history`` readings."""
        collector = make(history=5)
        taken = [collector.collect_once() for _ in range(8)]
        assert list(collector.system_metrics) == taken[-5:]

    def test_recent_system_metrics_filters_by_age(self) -> None:
        """get_recent_system_metrics(minutes) returns the readings of the last minutes only."""
        collector = make()
        now = datetime.now(timezone.utc)
        old = SystemMetrics(timestamp=now - timedelta(minutes=90), cpu_percent=1.0)
        mid = SystemMetrics(timestamp=now - timedelta(minutes=30), cpu_percent=2.0)
        collector.system_metrics.extend([old, mid])
        fresh = collector.collect_once()
        assert collector.get_recent_system_metrics(minutes=60) == [mid, fresh]
        assert collector.get_recent_system_metrics(minutes=120) == [old, mid, fresh]

    def test_gauges_and_counters_are_stored_by_name(self, db_path: Path) -> None:
        """Gauges are stored every cycle with their last value; counters as what was added."""
        instrument.configure(metrics_db=str(db_path))
        collector = make()
        collector.set_gauge("queue_size", 12)
        collector.increment("jobs_done", 3)
        collector.collect_once()
        collector.set_gauge("queue_size", 7)
        collector.increment("jobs_done")
        collector.increment("jobs_done")
        collector.collect_once()
        collector.collect_once()  # nothing added: no counter row
        assert instrument.flush(5)
        stored = rows(db_path, "SELECT name, kind, value, pid FROM app_metrics ORDER BY id")
        assert stored == [("queue_size", "gauge", 12.0, os.getpid()),
                          ("jobs_done", "counter", 3.0, os.getpid()),
                          ("queue_size", "gauge", 7.0, os.getpid()),
                          ("jobs_done", "counter", 2.0, os.getpid()),
                          ("queue_size", "gauge", 7.0, os.getpid())]
        assert collector.get_app_metrics() == {"queue_size": 7.0, "jobs_done": 5.0}

    def test_concurrent_increments_are_all_counted(self) -> None:
        """Counters lose no increment when many threads add at once."""
        collector = make()

        def work() -> None:
            for _ in range(5000):
                collector.increment("hits")

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert collector.get_app_metrics()["hits"] == 20000.0

    def test_gauge_callbacks_are_read_each_cycle(self, db_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
        """A callback gauge is read at every cycle; a failing one warns once and is skipped."""
        instrument.configure(metrics_db=str(db_path))
        collector = make()
        sizes = iter([3, 9])
        collector.gauge_callback("backlog", lambda: next(sizes))
        collector.gauge_callback("broken", lambda: 1 / 0)
        with caplog.at_level(logging.WARNING, logger="instrument"):
            collector.collect_once()
            collector.collect_once()
        assert instrument.flush(5)
        assert rows(db_path, "SELECT value FROM app_metrics WHERE name = 'backlog'"
                    " ORDER BY id") == [(3.0,), (9.0,)]
        assert rows(db_path, "SELECT count(*) FROM app_metrics WHERE name = 'broken'")[0][0] == 0
        assert sum("broken" in r.getMessage() for r in caplog.records) == 1

    def test_current_metrics_have_the_shape_alert_rules_read(self, db_path: Path) -> None:
        """get_current_metrics: latest system reading, last minutes of requests, app values."""
        instrument.configure(metrics_db=str(db_path))
        client = Client(flask_app())
        for i in range(8):
            assert client.get(f"/items/{i + 1}", buffered=True).status_code == 200
        for _ in range(2):
            assert client.get("/fail", buffered=True).status_code == 503
        collector = make()
        collector.set_gauge("queue_size", 25)
        collector.increment("emails_sent", 2)
        assert instrument.flush(5)
        current = collector.get_current_metrics(window_minutes=5)
        assert set(current) >= {"system", "api", "app"}
        system, api = current["system"], current["api"]
        assert (system["cpu_percent"], system["memory_percent"],
                system["disk_usage_percent"]) == (12.5, 40.0, 55.5)
        assert api["request_count"] == 10
        assert api["error_count"] == 2
        assert api["error_rate_percent"] == pytest.approx(20.0)
        assert api["requests_per_minute"] == pytest.approx(10 / api["window_minutes"])
        assert api["status_codes"] == {200: 8, 503: 2}
        assert 0 < api["avg_response_time_ms"] <= api["max_response_time_ms"]
        assert api["p95_response_time_ms"] > 0
        assert current["app"] == {"queue_size": 25.0, "emails_sent": 2.0}

    def test_current_metrics_without_a_store_have_no_api_section(self,
                                                                 memory: MemoryBackend) -> None:
        """With no SQLite backend there is nothing to count requests from: api is empty."""
        collector = make()
        current = collector.get_current_metrics()
        assert current["api"] == {}
        assert current["system"]["cpu_percent"] == 12.5
        assert collector.get_metrics_summary(hours=1)["endpoints"] == []

    def test_readings_carry_the_kits_own_health(self, memory: MemoryBackend) -> None:
        """Each reading reports the buffer depth and dropped samples of the kit itself."""
        runtime.recorder.resize(16)
        gate = threading.Event()
        for i in range(runtime.recorder.cap + 24):  # a probe takes one slot
            runtime.recorder.add(("probe", i))
        reading = make().collect_system_metrics()
        gate.set()
        assert reading.kit_dropped == instrument.stats()["dropped"] > 0
        assert reading.kit_buffered is not None and reading.kit_buffered >= 0

    def test_kill_switch_means_no_collection(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With INSTRUMENT_ENABLED=false start_collection starts nothing and records nothing."""
        monkeypatch.setenv("INSTRUMENT_ENABLED", "false")
        collector = make()
        assert collector.start_collection() is False
        assert not collector.running and collector_threads() == 0
        collector.store_app_metrics(metrics_collector.ApplicationMetrics(
            timestamp=datetime.now(timezone.utc), queue_size=3))
        assert len(runtime.recorder.buf) == 0

    def test_summary_ranks_slowest_and_failing_endpoints(self, db_path: Path) -> None:
        """get_metrics_summary lists endpoints, the slowest first and the failing ones."""
        instrument.configure(metrics_db=str(db_path))
        t0 = time.perf_counter()
        for i in range(30):
            runtime.recorder.add(("http", t0, t0 + 0.002, t0 + 0.001, "/fast", "GET", 200,
                                  0, 10, None, False))
            runtime.recorder.add(("http", t0, t0 + 0.400, t0 + 0.1, "/slow", "GET",
                                  500 if i < 3 else 200, 5, 10, None, False))
        assert instrument.flush(5)
        summary = make().get_metrics_summary(hours=24)
        assert summary["api"]["request_count"] == 60
        assert [e["endpoint"] for e in summary["slowest_endpoints"]] == ["/slow", "/fast"]
        assert [(e["endpoint"], e["error_count"]) for e in summary["most_failing_endpoints"]] \
            == [("/slow", 3)]
        assert summary["api"]["status_codes"] == {200: 57, 500: 3}

    def test_one_collector_per_process_and_a_running_one_after_fork(self, db_path: Path) -> None:
        """get_metrics_collector is a singleton; a forked child gets its own, still running."""
        instrument.configure(metrics_db=str(db_path), flush_interval=0.05)
        parent = get_metrics_collector()
        assert get_metrics_collector() is parent
        parent._options["source"] = FakePsutil()
        parent._options["interval"] = 0.05
        parent.start_collection()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, reports through the pipe
            code = 1
            try:
                child = get_metrics_collector()
                ok = (child is not parent and child.running
                      and wait_for(lambda: child.cycles >= 2, 10) and instrument.flush(5))
                os.write(write, json.dumps({"ok": bool(ok), "pid": os.getpid()}).encode())
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as f:
            report = json.loads(f.read() or "{}")
        deadline = time.monotonic() + 30
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        assert report == {"ok": True, "pid": pid}
        assert get_metrics_collector() is parent and parent.running
        assert rows(db_path, "SELECT count(*) FROM system_metrics WHERE pid = ?", pid)[0][0] >= 2


class TestStartupManager:
    """initialize_monitoring_system / start_monitoring_with_config / stop_monitoring."""

    def test_starting_twice_is_harmless(self, db_path: Path) -> None:
        """A second start returns the same running system: one collector, one flusher."""
        first = startup.start_monitoring_with_config()
        flusher = runtime.flusher
        second = startup.start_monitoring_with_config()
        assert second is first and first.running
        assert runtime.flusher is flusher
        assert collector_threads() == 1
        assert sum(t.name == "instrument-flusher" for t in threading.enumerate()) == 1

    def test_keyword_configuration_is_applied(self, tmp_path: Path) -> None:
        """metrics={...} sets the interval, retention and store; readings arrive at that pace."""
        store = tmp_path / "custom" / "m.db"
        system = startup.initialize_monitoring_system(
            metrics={"collection_interval": 0.05, "retention_days": 3, "db_path": str(store)},
            alerts={"check_interval": 30}, enable_email_alerts=False)
        assert (system.settings.collection_interval, system.settings.retention_days) == (0.05, 3)
        (backend,) = runtime.backends
        assert (backend.path, backend.retention_days) == (str(store), 3)
        assert wait_for(lambda: len(system.collector.system_metrics) >= 3)
        assert instrument.flush(5)
        assert rows(store, "SELECT count(*) FROM system_metrics")[0][0] >= 3

    def test_seed_environment_variables_are_read(self, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """METRICS_COLLECTION_INTERVAL and METRICS_DB_PATH configure start-up."""
        store = tmp_path / "seed.db"
        monkeypatch.delenv("INSTRUMENT_METRICS_DB")
        monkeypatch.setenv("METRICS_DB_PATH", str(store))
        monkeypatch.setenv("METRICS_COLLECTION_INTERVAL", "0.05")
        system = startup.start_monitoring_with_config()
        assert system.settings.metrics_db == str(store)
        assert system.collector.interval == 0.05
        assert wait_for(lambda: len(system.collector.system_metrics) >= 3)
        assert instrument.flush(5)
        assert rows(store, "SELECT count(*) FROM system_metrics")[0][0] >= 3

    def test_stop_monitoring_flushes_and_stops_everything(self, db_path: Path) -> None:
        """stop_monitoring stops collector and alerts and writes what was buffered."""
        system = startup.start_monitoring_with_config()
        t0 = time.perf_counter()
        for _ in range(25):
            runtime.recorder.add(("http", t0, t0 + 0.01, 0.0, "/x", "GET", 200, 0, 0, None,
                                  False))
        assert startup.stop_monitoring() is True
        assert not system.collector.running and collector_threads() == 0
        assert system.alert_manager is None or not system.alert_manager.running
        assert runtime.state != ON
        assert rows(db_path, "SELECT count(*) FROM api_metrics")[0][0] == 25

    def test_bad_configuration_fails_before_anything_starts(self) -> None:
        """A bad value raises ConfigError naming it, and nothing is started."""
        with pytest.raises(ConfigError, match="collection_interval"):
            startup.initialize_monitoring_system(metrics={"collection_interval": "soon"})
        with pytest.raises(ConfigError, match="colection_interval"):
            startup.initialize_monitoring_system(metrics={"colection_interval": 5})
        assert collector_threads() == 0 and runtime.state != ON

    def test_backends_configured_in_code_survive_start(self, memory: MemoryBackend) -> None:
        """start_monitoring_with_config keeps a kit configured in code as it is."""
        system = startup.start_monitoring_with_config()
        assert runtime.backends == [memory]
        assert instrument.flush(5)
        assert any(b.other.get("system") for b in memory.batches)
        assert system.settings.flush_interval == 0.05

    def test_alert_manager_gets_the_alert_options(self) -> None:
        """alerts={...} reaches the alert manager, which runs and reads the collector."""
        from instrument import alerting
        system = startup.initialize_monitoring_system(
            alerts={"check_interval": 0.05, "cooldown_period": 120})
        manager = system.alert_manager
        assert manager is alerting.get_alert_manager()
        assert (manager.settings.check_interval, manager.settings.cooldown_period) == (0.05, 120)
        assert manager.running
        assert wait_for(lambda: manager.health()["last_evaluation"] is not None)
        status = startup.monitoring_status()
        assert status["running"] and status["alert_manager"] == {"running": True}


class TestMonitoringPerformance:
    """The benchmarks run in --quick mode and produce correct results (not fast ones)."""

    def run(self, script: str, tmp_path: Path) -> dict[str, Any]:
        out = tmp_path / f"{script}.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("INSTRUMENT_")}
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"),
                               "--quick", "--json", str(out)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=110)
        assert proc.returncode == 0, proc.stderr
        return json.loads(out.read_text())

    def test_collector_benchmark_quick_mode(self, tmp_path: Path) -> None:
        """Every timed cycle's reading reaches the store and is plausible."""
        data = self.run("collector", tmp_path)
        checks = data["checks"]
        assert checks["rows"] == checks["expected_rows"] > 0
        assert checks["app_rows"] > 0
        assert checks["percentages_in_range"] and checks["network_non_decreasing"]
        assert checks["rss_positive"]
        for variant in ("without connections", "with connections"):
            assert data["results"][variant]["cycles"] >= 20
            assert data["results"][variant]["median_ms"] > 0

    def test_summary_benchmark_quick_mode(self, tmp_path: Path) -> None:
        """The summary over the generated day agrees with the raw rows and the exact p95."""
        r = self.run("summary", tmp_path)["results"]
        assert r["checked_request_count"] == r["requests_generated"] == r["raw"]["count"]
        assert r["checked_errors"] == r["expected_errors"] == r["raw"]["errors"]
        assert r["p95_exact_ms"] == pytest.approx(r["raw"]["p95"])
        assert abs(r["p95_estimate_ms"] / r["p95_exact_ms"] - 1) < 0.05
        assert r["endpoints"] == 20 and r["system_samples"] == 2880
        assert r["summary_p95_ms"] > 0


class TestAlertManager:
    """The seed's AlertManager snippets (imports as the seed writes them, renamed)."""

    @pytest.fixture(autouse=True)
    def _quiet_thread(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The monitoring thread checks once at start, then waits an hour."""
        monkeypatch.setenv("ALERT_CHECK_INTERVAL", "3600")

    @staticmethod
    def _first_check_done() -> None:
        """Wait for the thread's first check, so every later check is the test's own."""
        from instrument.alerting import get_alert_manager
        manager = get_alert_manager()
        assert wait_for(lambda: manager.health()["last_evaluation"])

    def test_add_custom_rule_with_lambda(self) -> None:
        """The README's AlertManager snippet: start monitoring and add a lambda rule."""
        from instrument.alerting import AlertRule, AlertSeverity, get_alert_manager

        alert_manager = get_alert_manager()
        alert_manager.start_monitoring()
        self._first_check_done()

        # Add custom rule
        rule = AlertRule(
            name="high_error_rate",
            description="API error rate is too high",
            severity=AlertSeverity.HIGH,
            condition=lambda metrics: metrics.get('api', {}).get('error_rate_percent', 0) > 5
        )
        alert_manager.add_rule(rule)

        assert alert_manager.running
        assert alert_manager.rules["high_error_rate"] is rule  # replaces the default rule
        alert_manager.evaluate({"api": {"error_rate_percent": 7.5}})
        assert "high_error_rate" in alert_manager.active_alerts
        alert_manager.evaluate({"api": {"error_rate_percent": 1.0}})
        assert "high_error_rate" not in alert_manager.active_alerts
        assert alert_manager.get_alerts()[0]["status"] == "resolved"

    def test_custom_condition_function(self) -> None:
        """The README's custom-rule snippet: a condition function with duration and cooldown."""
        from instrument.alerting import AlertRule, AlertSeverity, get_alert_manager

        def custom_condition(metrics):  # type: ignore[no-untyped-def]
            """Custom alert condition logic."""
            app_metrics = metrics.get('app', {})
            return app_metrics.get('queue_size', 0) > 100

        rule = AlertRule(
            name="high_queue_size",
            description="Background queue is backing up",
            severity=AlertSeverity.MEDIUM,
            condition=custom_condition,
            threshold_duration=300,  # 5 minutes
            cooldown_period=1800     # 30 minutes
        )

        alert_manager = get_alert_manager()
        alert_manager.add_rule(rule)

        alert_manager.evaluate({"app": {"queue_size": 250}})
        assert "high_queue_size" in alert_manager.pending_alerts  # waits its 5 minutes
        assert "high_queue_size" not in alert_manager.active_alerts
        alert_manager.evaluate({"app": {"queue_size": 25}})
        assert alert_manager.pending_alerts == {}

    def test_custom_notification_handler(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The README's notification-channel snippet: a handler called with the alert."""
        from instrument.alerting import AlertRule, AlertSeverity, get_alert_manager

        def custom_notification_handler(alert):  # type: ignore[no-untyped-def]
            """Custom notification handler."""
            # Send to custom service (PagerDuty, Teams, etc.)
            print(f"Custom notification: {alert.name} - {alert.description}")

        alert_manager = get_alert_manager()
        alert_manager.add_notification_handler(custom_notification_handler)

        alert_manager.add_rule(AlertRule("queue", "Queue is long", AlertSeverity.LOW,
                                         lambda m: m.get("app", {}).get("queue_size", 0) > 100))
        alert_manager.evaluate({"app": {"queue_size": 500}})
        assert "Custom notification: queue - Queue is long" in capsys.readouterr().out
        history = alert_manager.get_alert_history(rule="queue")
        assert any(h["event"] == "notification_sent" and "custom_notification_handler"
                   in h["detail"] for h in history)

    def test_alerts_not_firing_troubleshooting(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The README's troubleshooting snippet prints running state, rules and alerts."""
        from instrument.alerting import get_alert_manager

        alert_manager = get_alert_manager()
        print(f"Running: {alert_manager.running}")
        print(f"Active rules: {len(alert_manager.rules)}")
        print(f"Active alerts: {len(alert_manager.active_alerts)}")
        assert capsys.readouterr().out.splitlines() == [
            "Running: False", "Active rules: 6", "Active alerts: 0"]
