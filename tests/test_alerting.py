"""The alert state machine and manager, driven by an injected clock: no sleeping.

The manager runs against a real SQLite file; restarts are a second manager (or
a killed subprocess) on the same file.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from instrument.alerting import (
    Alert,
    AlertManager,
    AlertRule,
    AlertSeverity,
    Threshold,
    get_alert_manager,
    reset_alert_manager,
)
from instrument.alerting.channels.base import DeliveryError
from instrument.alerting.state import AlertStatus, RuleState, acknowledge, step
from instrument.config import ConfigError
from instrument.core.suppress import is_suppressed


class Clock:
    """Epoch seconds that move only when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class Pager:
    """A named notification handler that records (kind, rule, alert id); may be told to fail."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, str]] = []
        self.fail_with: BaseException | None = None
        self.suppressed: list[bool] = []

    def __call__(self, alert: Alert) -> None:
        self.suppressed.append(is_suppressed())
        if self.fail_with is not None:
            raise self.fail_with
        self.got.append((alert.metadata["event"], alert.name, alert.id))

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.got]


CPU = Threshold("system.cpu_percent", ">", 80)


def cpu_rule(**kw: Any) -> AlertRule:
    kw.setdefault("threshold_duration", 300)
    return AlertRule("cpu", "CPU high", AlertSeverity.HIGH, CPU, **kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics() -> dict[str, dict[str, Any]]:
    return {"system": {"cpu_percent": 10.0}, "api": {}, "app": {}}


@pytest.fixture
def make(tmp_path: Path, clock: Clock, metrics: dict[str, Any]) -> Iterator[Any]:
    """Build managers on one alerts file with the fake clock and metrics; closes them after."""
    made: list[AlertManager] = []

    def build(*rules: AlertRule, pager: Pager | None = None, **kw: Any) -> AlertManager:
        kw.setdefault("environ", {})
        kw.setdefault("default_rules", False)
        kw.setdefault("log_alerts", False)
        kw.setdefault("metrics_provider", lambda: metrics)
        manager = AlertManager(db_path=str(tmp_path / "alerts.db"), clock=clock, **kw)
        for rule in rules:
            manager.add_rule(rule)
        if pager is not None:
            manager.add_notification_handler(pager, name="pager")
        made.append(manager)
        return manager

    yield build
    for manager in made:
        manager.close()


# -- the pure state machine ------------------------------------------------------------------

def run(rule: AlertRule, st: RuleState, met: bool | None, now: float) -> list[str]:
    return [("notify:" if c.notify else "") + c.kind for c in step(rule, st, met, now, f"id@{now}")]


def test_pending_notifies_nobody_until_threshold_duration() -> None:
    """A true condition is pending (no notification) until it has held threshold_duration."""
    rule, st = cpu_rule(), RuleState("cpu")
    assert run(rule, st, True, 0) == ["pending"]
    assert run(rule, st, True, 299) == []
    assert st.state is AlertStatus.PENDING
    assert run(rule, st, True, 300) == ["firing", "notify:firing"]
    assert st.state is AlertStatus.FIRING and st.fired_at == 300


def test_condition_clearing_while_pending_cancels_silently() -> None:
    """A condition that clears before threshold_duration goes back to inactive, unannounced."""
    rule, st = cpu_rule(), RuleState("cpu")
    run(rule, st, True, 0)
    assert run(rule, st, False, 100) == ["cancelled"]
    assert st.state is AlertStatus.INACTIVE and st.pending_since is None
    assert run(rule, st, True, 200) == ["pending"]  # progress starts over


def test_resolve_is_notified_once_by_default_and_can_be_turned_off() -> None:
    """Resolving sends one resolved notification; send_resolved=False sends none."""
    for send_resolved, expected in ((True, ["resolved", "notify:resolved"]), (False, ["resolved"])):
        rule, st = cpu_rule(threshold_duration=0, send_resolved=send_resolved), RuleState("cpu")
        run(rule, st, True, 0)
        assert run(rule, st, False, 60) == expected
        assert run(rule, st, False, 120) == []
        assert st.state is AlertStatus.RESOLVED


def test_cooldown_is_the_repeat_interval_while_firing() -> None:
    """A still-firing alert repeats every cooldown_period, not every evaluation."""
    rule, st = cpu_rule(threshold_duration=0, cooldown_period=600), RuleState("cpu")
    run(rule, st, True, 0)
    repeats = [t for t in range(60, 1900, 60) if "notify:repeat" in run(rule, st, True, t)]
    assert repeats == [600, 1200, 1800]
    never = cpu_rule(threshold_duration=0, cooldown_period=0)
    st2 = RuleState("cpu")
    run(never, st2, True, 0)
    assert all(run(never, st2, True, t) == [] for t in range(60, 5000, 60))


def test_flapping_alert_pages_once_then_waits_until_stable() -> None:
    """Re-firing within flap_window pages once as flapping, then nothing until stable."""
    rule = cpu_rule(threshold_duration=0, flap_window=1000, flap_threshold=2)
    st = RuleState("cpu")
    assert run(rule, st, True, 0) == ["pending", "firing", "notify:firing"]
    first_id = st.alert_id
    assert run(rule, st, False, 60) == ["resolved", "notify:resolved"]
    assert run(rule, st, True, 120) == ["pending", "flapping", "firing", "notify:firing"]
    notified = []
    for t in range(180, 900, 60):  # keeps flapping every minute
        notified += [k for k in run(rule, st, t % 120 == 0, t) if k.startswith("notify")]
    assert notified == []
    assert st.flapping and st.alert_id != first_id
    flapping_id = st.alert_id
    # Stable (resolved) for a whole window: one resolved notification, same episode.
    out: list[str] = []
    for t in range(900, 2100, 60):
        out += run(rule, st, False, t)
    assert out.count("notify:resolved") == 1 and "flap_end" in out
    assert not st.flapping and st.alert_id == flapping_id


def test_no_data_policies() -> None:
    """No data counts as false ('ok'), true ('alerting') or changes nothing ('keep')."""
    ok, alerting, keep = (cpu_rule(threshold_duration=0, no_data=p)
                          for p in ("ok", "alerting", "keep"))
    st = RuleState("cpu")
    run(ok, st, True, 0)
    assert run(ok, st, None, 60) == ["resolved", "notify:resolved"]
    st = RuleState("cpu")
    assert run(alerting, st, None, 0) == ["pending", "firing", "notify:firing"]
    st = RuleState("cpu")
    run(keep, st, True, 0)
    assert run(keep, st, None, 60) == [] and st.state is AlertStatus.FIRING
    pending = RuleState("cpu")
    run(cpu_rule(no_data="keep"), pending, True, 0)
    assert run(cpu_rule(no_data="keep"), pending, None, 400) == []
    assert pending.state is AlertStatus.PENDING  # no progress without data


def test_acknowledge_only_applies_to_firing_alerts() -> None:
    """Acknowledging marks a firing episode once; pending or resolved ones are untouched."""
    rule, st = cpu_rule(threshold_duration=0), RuleState("cpu")
    assert acknowledge(st, "ann", 0) == []
    run(rule, st, True, 0)
    assert [c.kind for c in acknowledge(st, "ann", 10)] == ["acknowledged", "acknowledged"]
    assert acknowledge(st, "bob", 20) == [] and st.acknowledged_by == "ann"


# -- rules and configuration -----------------------------------------------------------------

def test_seed_default_rules_are_installed(make: Any) -> None:
    """The seed's six rules come with its thresholds, severities and durations."""
    manager = make(default_rules=True)
    got = {n: (str(r.condition), r.severity, r.threshold_duration)
           for n, r in manager.rules.items()}
    assert got == {
        "high_cpu": ("system.cpu_percent > 80", AlertSeverity.HIGH, 300),
        "critical_memory": ("system.memory_percent > 90", AlertSeverity.CRITICAL, 180),
        "high_error_rate": ("api.error_rate_percent > 10", AlertSeverity.HIGH, 300),
        "slow_responses": ("api.avg_response_time_ms > 5000", AlertSeverity.MEDIUM, 600),
        "low_disk_space": ("system.disk_usage_percent > 85", AlertSeverity.HIGH, 300),
        "system_down": ("api.request_count <= 0", AlertSeverity.CRITICAL, 900),
    }
    assert all(r.cooldown_period == 1800 for r in manager.rules.values())


def test_default_rules_can_be_switched_off_and_tuned_from_the_environment(make: Any) -> None:
    """INSTRUMENT_ALERT_DEFAULT_RULES picks rules; INSTRUMENT_ALERT_RULES tunes and adds."""
    rules = [{"name": "high_cpu", "value": 95, "for": 60},
             {"name": "queue", "metric": "app.queue_size", "op": ">", "value": 100,
              "severity": "medium"}]
    env = {"INSTRUMENT_ALERT_DEFAULT_RULES": "high_cpu,low_disk_space",
           "INSTRUMENT_ALERT_RULES": json.dumps(rules), "ALERT_COOLDOWN_PERIOD": "900"}
    manager = make(environ=env, default_rules=None)
    assert sorted(manager.rules) == ["high_cpu", "low_disk_space", "queue"]
    cpu = manager.rules["high_cpu"]
    assert str(cpu.condition) == "system.cpu_percent > 95" and cpu.threshold_duration == 60
    assert manager.rules["queue"].cooldown_period == 900
    assert make(environ={"INSTRUMENT_ALERT_DEFAULT_RULES": "none"}, default_rules=None).rules == {}


@pytest.mark.parametrize(("env", "needle"), [
    ({"ALERT_CHECK_INTERVAL": "soon"}, "'ALERT_CHECK_INTERVAL' has value 'soon'"),
    ({"INSTRUMENT_ALERT_DEFAULT_RULES": "high_cpu,nope"}, "'nope'"),
    ({"INSTRUMENT_ALERT_RULES": "[{\"name\": \"x\"}]"}, "INSTRUMENT_ALERT_RULES"),
    ({"ENABLE_EMAIL_ALERTS": "true"}, "SMTP_SERVER"),
    ({"SMTP_PORT": "70000"}, "'SMTP_PORT' has value '70000'"),
    ({"SLACK_WEBHOOK_URL": "hooks.slack.com/x"}, "'SLACK_WEBHOOK_URL' has value (hidden)"),
])
def test_bad_settings_raise_config_error_naming_variable(make: Any, env: dict[str, str],
                                                        needle: str) -> None:
    """A bad alerting variable fails start-up with its name (and value unless secret)."""
    with pytest.raises(ConfigError) as info:
        make(environ=env)
    assert needle in str(info.value)
    assert "hooks.slack.com" not in str(info.value)


# -- the manager -----------------------------------------------------------------------------

def test_manager_fires_after_duration_and_resolves(make: Any, clock: Clock,
                                                   metrics: dict[str, Any]) -> None:
    """End to end: pending, firing, resolved; handler and alerts table agree."""
    pager = Pager()
    manager = make(cpu_rule(), pager=pager)
    metrics["system"]["cpu_percent"] = 95
    manager.evaluate()
    assert manager.pending_alerts.keys() == {"cpu"} and pager.got == []
    clock.tick(300)
    manager.evaluate()
    assert pager.kinds() == ["firing"] and manager.active_alerts.keys() == {"cpu"}
    alert_id = pager.got[0][2]
    metrics["system"]["cpu_percent"] = 20
    clock.tick(60)
    manager.evaluate()
    assert pager.kinds() == ["firing", "resolved"] and manager.active_alerts == {}
    [row] = manager.get_alerts()
    assert row["id"] == alert_id and row["status"] == "resolved"
    assert row["metadata"]["value"] == 20 and row["resolved_at"].startswith("2023-11-14T22:")
    events = [h["event"] for h in reversed(manager.get_alert_history())]
    assert events == ["pending", "firing", "notification_sent", "resolved", "notification_sent"]


def test_seed_alerts_table_has_the_seed_columns(make: Any, tmp_path: Path) -> None:
    """The ``alerts`` table keeps the seed's columns in the seed's order."""
    make()
    conn = sqlite3.connect(tmp_path / "alerts.db")
    cols = [r[1] for r in conn.execute("PRAGMA table_info(alerts)")]
    conn.close()
    assert cols[:10] == ["id", "name", "description", "severity", "status", "created_at",
                         "updated_at", "resolved_at", "acknowledged_at", "metadata"]


def test_raising_condition_and_missing_metric_never_stop_the_loop(make: Any, clock: Clock,
                                                                  metrics: dict[str, Any]) -> None:
    """Broken rules follow their no-data policy and show the error in the history."""
    def broken(m: Any) -> bool:
        raise ZeroDivisionError("boom")

    pager = Pager()
    manager = make(AlertRule("broken", "b", AlertSeverity.LOW, broken, no_data="alerting"),
                   AlertRule("gone", "g", AlertSeverity.LOW, "app.queue_size > 5"),
                   cpu_rule(threshold_duration=0), pager=pager)
    metrics["system"]["cpu_percent"] = 99
    manager.evaluate()
    assert sorted(n for _, n, _ in pager.got) == ["broken", "cpu"]
    errors = {h["rule"]: h["detail"] for h in manager.get_alert_history()
              if h["event"] == "no_data"}
    assert errors == {"broken": "condition raised ZeroDivisionError: boom",
                      "gone": "metric app.queue_size missing"}
    clock.tick(60)
    manager.evaluate()  # same errors again: not repeated in the history
    assert sum(h["event"] == "no_data" for h in manager.get_alert_history()) == 2


def test_metrics_provider_failure_is_counted_not_raised(make: Any) -> None:
    """A metrics source that raises shows up in health; evaluation still completes."""
    def provider() -> dict[str, Any]:
        raise RuntimeError("collector down")

    manager = make(cpu_rule(), metrics_provider=provider)
    [(_, change)] = manager.evaluate()  # the rule saw no data, the loop went on
    assert change.kind == "no_data" and "missing" in change.detail
    assert manager.health()["evaluation_errors"] == 1
    assert "collector down" in manager.health()["last_error"]


def test_handlers_run_under_the_suppress_flag(make: Any, metrics: dict[str, Any]) -> None:
    """Channel I/O runs with instrumentation suppressed, so it is not recorded as the app's."""
    pager = Pager()
    manager = make(cpu_rule(threshold_duration=0), pager=pager)
    metrics["system"]["cpu_percent"] = 99
    manager.evaluate()
    assert pager.suppressed == [True] and not is_suppressed()


def test_failed_notification_is_retried_with_backoff_and_recorded(make: Any, clock: Clock,
                                                                  metrics: dict[str, Any]) -> None:
    """A failing channel is retried later; each failure is in history and health."""
    pager = Pager()
    pager.fail_with = ConnectionError("pager unreachable")
    manager = make(cpu_rule(threshold_duration=0), pager=pager)
    metrics["system"]["cpu_percent"] = 99
    manager.evaluate()
    [note] = manager.get_notifications()
    assert note["status"] == "queued" and note["attempts"] == 1
    assert "pager unreachable" in note["last_error"]
    health = manager.health()["channels"]["pager"]
    assert health["failures"] == 1 and "pager unreachable" in health["last_error"]
    clock.tick(5)
    manager.evaluate()
    assert len(pager.suppressed) == 1  # backing off: not yet retried
    pager.fail_with = None
    clock.tick(30)
    manager.evaluate()
    assert pager.kinds() == ["firing"]
    assert manager.get_notifications()[0]["status"] == "sent"
    failed = [h for h in manager.get_alert_history() if h["event"] == "notification_failed"]
    assert len(failed) == 1 and "retry in 15s" in failed[0]["detail"]


def test_permanent_failure_is_not_retried(make: Any, clock: Clock,
                                          metrics: dict[str, Any]) -> None:
    """A permanent DeliveryError (like HTTP 400) is given up at once and recorded."""
    pager = Pager()
    pager.fail_with = DeliveryError("HTTP 400: bad payload", permanent=True)
    manager = make(cpu_rule(threshold_duration=0, cooldown_period=0), pager=pager)
    metrics["system"]["cpu_percent"] = 99
    manager.evaluate()
    clock.tick(3600)
    manager.evaluate()
    assert len(pager.suppressed) == 1
    [note] = manager.get_notifications()
    assert note["status"] == "failed"
    assert manager.health()["channels"]["pager"]["given_up"] == 1


def test_resolved_never_overtakes_a_firing_that_waits_for_retry(make: Any, clock: Clock,
                                                                metrics: dict[str, Any]) -> None:
    """Per channel and alert, notifications arrive in order even across retries."""
    pager = Pager()
    pager.fail_with = TimeoutError()
    manager = make(cpu_rule(threshold_duration=0), pager=pager)
    metrics["system"]["cpu_percent"] = 99
    manager.evaluate()
    metrics["system"]["cpu_percent"] = 1
    clock.tick(1)
    pager.fail_with = None
    manager.evaluate()  # resolved is due, firing is backing off: nothing may be sent
    assert pager.got == []
    clock.tick(60)
    manager.evaluate()
    assert pager.kinds() == ["firing", "resolved"]


def test_acknowledge_notifies_channels_that_want_it(make: Any, metrics: dict[str, Any]) -> None:
    """acknowledge() records who acknowledged and tells channels that take acknowledgements."""
    pager = Pager()
    manager = make(cpu_rule(threshold_duration=0), pager=pager)
    metrics["system"]["cpu_percent"] = 99
    manager.evaluate()
    alert_id = manager.active_alerts["cpu"].id
    assert manager.acknowledge(alert_id, by="ann") is True
    assert manager.acknowledge("no-such-alert") is False
    row = manager.get_alerts()[0]
    assert row["acknowledged_by"] == "ann" and row["acknowledged_at"]
    assert pager.kinds() == ["firing"]  # plain handlers only take firing/repeat/resolved


def test_removing_a_firing_rule_sends_its_resolve(make: Any, metrics: dict[str, Any]) -> None:
    """remove_rule() on a firing rule resolves it, so receivers are not left hanging."""
    pager = Pager()
    manager = make(cpu_rule(threshold_duration=0), pager=pager)
    metrics["system"]["cpu_percent"] = 99
    manager.evaluate()
    assert manager.remove_rule("cpu") is True and manager.remove_rule("cpu") is False
    assert pager.kinds() == ["firing", "resolved"]


# -- restarts --------------------------------------------------------------------------------

def test_restart_does_not_announce_firing_alerts_again(make: Any, clock: Clock,
                                                       metrics: dict[str, Any]) -> None:
    """A manager restarted on the same file keeps the alert, its id and its repeat schedule."""
    pager = Pager()
    first = make(cpu_rule(threshold_duration=0, cooldown_period=600), pager=pager)
    metrics["system"]["cpu_percent"] = 99
    first.evaluate()
    alert_id = first.active_alerts["cpu"].id
    first.close()
    again = Pager()
    second = make(cpu_rule(threshold_duration=0, cooldown_period=600), pager=again)
    clock.tick(60)
    second.evaluate()
    assert again.got == [] and second.active_alerts["cpu"].id == alert_id
    clock.tick(540)
    second.evaluate()
    assert again.kinds() == ["repeat"]


def test_restart_keeps_pending_progress(make: Any, clock: Clock,
                                        metrics: dict[str, Any]) -> None:
    """Pending time before a restart counts toward threshold_duration after it."""
    first = make(cpu_rule(threshold_duration=300))
    metrics["system"]["cpu_percent"] = 99
    first.evaluate()
    clock.tick(200)
    first.evaluate()
    first.close()
    pager = Pager()
    second = make(cpu_rule(threshold_duration=300), pager=pager)
    clock.tick(100)
    second.evaluate()
    assert pager.kinds() == ["firing"]


def test_pending_starts_over_after_a_long_outage(make: Any, clock: Clock,
                                                 metrics: dict[str, Any]) -> None:
    """Progress from before an outage longer than outage_tolerance is not trusted."""
    first = make(cpu_rule(threshold_duration=300))
    metrics["system"]["cpu_percent"] = 99
    first.evaluate()
    first.close()
    pager = Pager()
    second = make(cpu_rule(threshold_duration=300), pager=pager, outage_tolerance=600)
    clock.tick(7200)
    second.evaluate()
    assert pager.got == [] and second.pending_alerts.keys() == {"cpu"}
    clock.tick(300)
    second.evaluate()
    assert pager.kinds() == ["firing"]


def test_resolve_that_happened_while_down_is_sent_once(make: Any, clock: Clock,
                                                       metrics: dict[str, Any]) -> None:
    """After a crash (lease not released) the next manager sends the resolve exactly once."""
    pager = Pager()
    first = make(cpu_rule(threshold_duration=0), pager=pager)
    metrics["system"]["cpu_percent"] = 99
    first.evaluate()
    metrics["system"]["cpu_percent"] = 5
    second = make(cpu_rule(threshold_duration=0), pager=pager)
    clock.tick(60)
    assert second.evaluate() == []  # the crashed owner's lease has not expired yet
    clock.tick(180)
    second.evaluate()
    clock.tick(60)
    second.evaluate()
    assert pager.kinds() == ["firing", "resolved"]


def test_only_one_manager_per_file_evaluates(make: Any, metrics: dict[str, Any]) -> None:
    """Two managers on one file (two workers) page once, not twice."""
    pager = Pager()
    one = make(cpu_rule(threshold_duration=0), pager=pager)
    two = make(cpu_rule(threshold_duration=0), pager=pager)
    metrics["system"]["cpu_percent"] = 99
    one.evaluate()
    two.evaluate()
    assert pager.kinds() == ["firing"]
    assert one.health()["leader"] and not two.health()["leader"]


_CRASHING_CHILD = textwrap.dedent("""
    import os, sys
    from instrument.alerting import AlertManager, AlertRule, AlertSeverity
    def die(alert):
        os._exit(3)  # killed after the decision was committed, before the pager accepted
    m = AlertManager(db_path=sys.argv[1], environ={}, default_rules=False, log_alerts=False,
                     metrics_provider=lambda: {"system": {"cpu_percent": 99}})
    m.add_rule(AlertRule("cpu", "CPU high", AlertSeverity.HIGH, "system.cpu_percent > 80"))
    m.add_notification_handler(die, name="pager")
    m.evaluate()
""")


def test_notification_committed_before_a_crash_is_delivered_once(tmp_path: Path) -> None:
    """A process killed mid-delivery leaves the page in the outbox; the next one sends it."""
    db = tmp_path / "alerts.db"
    child = subprocess.run([sys.executable, "-c", _CRASHING_CHILD, str(db)], timeout=60,
                           capture_output=True, text=True, env=dict(os.environ))
    assert child.returncode == 3, child.stderr
    pager = Pager()
    manager = AlertManager(db_path=str(db), environ={}, default_rules=False, log_alerts=False,
                           metrics_provider=lambda: {"system": {"cpu_percent": 99}})
    try:
        manager.add_rule(AlertRule("cpu", "CPU high", AlertSeverity.HIGH, CPU))
        manager.add_notification_handler(pager, name="pager")
        manager.evaluate()  # the dead child's lease is taken over at once
        manager.evaluate()
        assert pager.kinds() == ["firing"]
        assert [n["status"] for n in manager.get_notifications()] == ["sent"]
    finally:
        manager.close()


def test_forked_child_does_not_take_over_the_parents_lease(make: Any,
                                                           metrics: dict[str, Any]) -> None:
    """After fork the child gets its own connection and owner id, so it cannot page too."""
    pager = Pager()
    manager = make(cpu_rule(threshold_duration=0), pager=pager)
    metrics["system"]["cpu_percent"] = 99
    manager.evaluate()
    pid = os.fork()
    if pid == 0:  # child: report through the exit code only
        code = 1
        try:
            changes = manager.evaluate()
            code = 0 if changes == [] and not manager.health()["leader"] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pager.kinds() == ["firing"] and manager.evaluate() == []
    assert manager.health()["leader"]


# -- the thread and the singleton ------------------------------------------------------------

def test_monitoring_thread_evaluates_every_interval(make: Any, metrics: dict[str, Any]) -> None:
    """start_monitoring() evaluates in its own thread; stop_monitoring() stops it."""
    fired = threading.Event()
    manager = make(cpu_rule(threshold_duration=0), check_interval=0.02)
    manager.add_notification_handler(lambda alert: fired.set())
    manager.start_monitoring()
    assert manager.running
    metrics["system"]["cpu_percent"] = 99  # seen by a later cycle, not the first
    assert fired.wait(10)
    assert manager.stop_monitoring() is True and not manager.running


def test_get_alert_manager_reads_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """The process-wide manager reads ALERTS_DB_PATH and ALERT_CHECK_INTERVAL when built."""
    monkeypatch.setenv("ALERTS_DB_PATH", str(tmp_path / "seed.db"))
    monkeypatch.setenv("ALERT_CHECK_INTERVAL", "15")
    try:
        manager = get_alert_manager()
        assert manager is get_alert_manager()
        assert manager.settings.check_interval == 15
        assert (tmp_path / "seed.db").exists() and len(manager.rules) == 6
    finally:
        reset_alert_manager()


def test_secrets_stay_out_of_reprs_health_and_logs(make: Any, metrics: dict[str, Any],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Passwords, webhook URLs and routing keys never show in reprs, health or logs."""
    secrets = {"SMTP_PASSWORD": "hunter2-secret", "SLACK_WEBHOOK_URL":
               "http://127.0.0.1:9/services/T000/B000/slack-secret",
               "INSTRUMENT_PAGERDUTY_ROUTING_KEY": "pd-routing-secret",
               "INSTRUMENT_PAGERDUTY_URL": "http://127.0.0.1:9/enqueue",
               "INSTRUMENT_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/hook?token=hook-secret"}
    env = secrets | {"ENABLE_SLACK_ALERTS": "true", "ENABLE_EMAIL_ALERTS": "true",
                     "SMTP_SERVER": "127.0.0.1", "SMTP_PORT": "9", "ALERT_TO_EMAILS": "a@b.c",
                     "INSTRUMENT_ALERT_HTTP_TIMEOUT": "0.5"}
    manager = make(cpu_rule(threshold_duration=0), environ=env)
    for channel in manager.dispatcher.channels.values():  # make the failures quick
        if hasattr(channel, "http"):
            channel.http.retries = 0
    metrics["system"]["cpu_percent"] = 99
    with caplog.at_level(logging.DEBUG):
        manager.evaluate()
    shown = " ".join([repr(manager), repr(manager.settings), caplog.text,
                      json.dumps(manager.health()), json.dumps(manager.get_alert_history()),
                      json.dumps(manager.get_notifications()),
                      *map(repr, manager.dispatcher.channels.values())])
    assert manager.health()["channels"]["slack"]["failures"] == 1
    for word in ("hunter2", "slack-secret", "pd-routing-secret", "hook-secret", "T000"):
        assert word not in shown


def test_alerting_benchmark_quick_mode(tmp_path: Path) -> None:
    """benchmarks/alerting.py --quick runs and a threshold rule evaluates in under 50 us."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "alerting.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTRUMENT_")}
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "alerting.py"), "--quick",
                           "--json", str(out)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"]
    assert results["threshold_rule_target_met"]
    assert 0 < results["pure"]["default rules (6), pure pass"]["median_us"] < 1000
    assert results["store_cycle"]["evaluate() cycle over the store"]["median_us"] > 0
