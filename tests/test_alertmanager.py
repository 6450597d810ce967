"""A real Prometheus Alertmanager receives, groups and resolves the kit's alerts.

Debian's ``prometheus-alertmanager`` (``make system-deps``) runs on 127.0.0.1
with clustering off, a temporary storage path and a config that groups by
severity and forwards to a loopback webhook recorder. Everything is read back
through Alertmanager's own API (``/api/v2/alerts``, ``/api/v2/alerts/groups``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from instrument.alerting import AlertManager, AlertRule, AlertSeverity
from tests.alert_receivers import Recorder, http_recorder
from tests.servers import HOST, wait_until

BINARY = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"

CONFIG = """
route:
  receiver: hook
  group_by: ['severity']
  group_wait: 200ms
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {hook}/am
        send_resolved: true
"""


def _free_port() -> int:
    # Alertmanager binds its own listener; a port the kernel just handed out is the best we have.
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def hook() -> Iterator[Recorder]:
    with http_recorder() as rec:
        yield rec


@contextmanager
def running_alertmanager(tmp_path: Path, hook: Recorder, port: int | None = None
                         ) -> Iterator[str]:
    """Base URL of a running Alertmanager (started again on another port if one was taken)."""
    config = tmp_path / "alertmanager.yml"
    config.write_text(CONFIG.format(hook=hook.url))
    for _ in range(5):
        chosen = port or _free_port()
        log = (tmp_path / f"am-{chosen}.log").open("w")
        proc = subprocess.Popen(
            [BINARY, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
             f"--web.listen-address={HOST}:{chosen}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT)
        url = f"http://{HOST}:{chosen}"
        try:
            wait_until(lambda p=proc, u=url: p.poll() is not None or _ready(u), 30,
                       what="alertmanager")
        except TimeoutError:
            proc.kill()
            raise
        if proc.poll() is None:
            break
        log.close()
    else:
        pytest.fail("alertmanager did not start: " + log.name)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def alertmanager(tmp_path: Path, hook: Recorder) -> Iterator[str]:
    with running_alertmanager(tmp_path, hook) as url:
        yield url


def _ready(url: str) -> bool:
    try:
        return requests.get(url + "/-/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def am_alerts(url: str) -> list[dict[str, Any]]:
    return list(requests.get(url + "/api/v2/alerts", timeout=5).json())


def am_groups(url: str) -> list[dict[str, Any]]:
    return list(requests.get(url + "/api/v2/alerts/groups", timeout=5).json())


def _ends(alert: dict[str, Any]) -> float:
    return datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00")).timestamp()


def test_alertmanager_receives_groups_and_resolves(alertmanager: str, hook: Recorder,
                                                   tmp_path: Path) -> None:
    """Firing alerts are grouped and notified by Alertmanager, kept alive, then resolved."""
    metrics: dict[str, Any] = {"system": {"cpu_percent": 95.0, "disk_usage_percent": 91.0}}
    manager = AlertManager(
        db_path=str(tmp_path / "alerts.db"), default_rules=False, log_alerts=False,
        metrics_provider=lambda: metrics,
        environ={"INSTRUMENT_ALERTMANAGER_URL": alertmanager, "ALERT_CHECK_INTERVAL": "1"})
    try:
        manager.add_rule(AlertRule("high_cpu", "CPU above 80%", AlertSeverity.HIGH,
                                   "system.cpu_percent > 80", labels={"team": "web"}))
        manager.add_rule(AlertRule("low_disk_space", "Disk above 85%", AlertSeverity.HIGH,
                                   "system.disk_usage_percent > 85"))
        manager.evaluate()
        assert [n["status"] for n in manager.get_notifications(channel="alertmanager")] == \
            ["sent", "sent"]

        active = wait_until(lambda: len(am_alerts(alertmanager)) == 2 and am_alerts(alertmanager),
                            what="two active alerts")
        by_name = {a["labels"]["alertname"]: a for a in active}
        assert by_name["high_cpu"]["labels"] == {"alertname": "high_cpu", "severity": "high",
                                                 "team": "web"}
        assert by_name["high_cpu"]["annotations"]["summary"] == "CPU above 80%"
        assert by_name["high_cpu"]["status"]["state"] == "active"
        # Rolling endsAt, the way Prometheus does it: about 4 resend intervals ahead.
        first_end = _ends(by_name["high_cpu"])
        assert 2.0 < first_end - time.time() <= 4.5
        [group] = am_groups(alertmanager)
        assert group["labels"] == {"severity": "high"} and len(group["alerts"]) == 2

        [notified] = hook.wait_for(1)  # one grouped notification for both alerts
        assert notified.body["status"] == "firing" and len(notified.body["alerts"]) == 2

        time.sleep(1.1)  # the next check interval: the still-firing alerts are re-posted
        manager.evaluate()
        refreshed = {a["labels"]["alertname"]: a for a in am_alerts(alertmanager)}
        assert _ends(refreshed["high_cpu"]) > first_end

        metrics["system"] = {"cpu_percent": 10.0, "disk_usage_percent": 20.0}
        manager.evaluate()
        wait_until(lambda: am_alerts(alertmanager) == [], what="alerts resolved")
        resolved = wait_until(lambda: [r for r in hook.requests
                                       if r.body["status"] == "resolved"], what="resolved hook")
        assert sorted(a["labels"]["alertname"] for a in resolved[0].body["alerts"]) == \
            ["high_cpu", "low_disk_space"]
        assert manager.health()["channels"]["alertmanager"]["failures"] == 0
    finally:
        manager.close()


def test_alertmanager_down_is_retried_until_it_accepts(tmp_path: Path, hook: Recorder) -> None:
    """While Alertmanager is down the alert waits in the outbox; once it is up, it arrives."""
    port = _free_port()
    now = [time.time()]
    manager = AlertManager(
        db_path=str(tmp_path / "alerts.db"), default_rules=False, log_alerts=False,
        clock=lambda: now[0], metrics_provider=lambda: {"system": {"cpu_percent": 99.0}},
        environ={"INSTRUMENT_ALERTMANAGER_URL": f"http://{HOST}:{port}",
                 "INSTRUMENT_ALERT_HTTP_TIMEOUT": "0.5"})
    try:
        manager.dispatcher.channels["alertmanager"].http.retries = 0  # type: ignore[attr-defined]
        manager.add_rule(AlertRule("cpu", "CPU", AlertSeverity.HIGH, "system.cpu_percent > 80"))
        manager.evaluate()
        [note] = manager.get_notifications()
        assert note["status"] == "queued" and "ConnectionError" in note["last_error"]
        assert manager.health()["channels"]["alertmanager"]["failures"] >= 1
        with running_alertmanager(tmp_path, hook, port=port) as url:
            now[0] += 60  # past the outbox backoff
            manager.evaluate()
            assert manager.get_notifications()[0]["status"] == "sent"
            [alert] = wait_until(lambda: am_alerts(url), what="the late alert")
            assert alert["labels"]["alertname"] == "cpu"
    finally:
        manager.close()
