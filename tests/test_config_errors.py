"""Failures a user causes by configuration name the setting to change (issue 17).

Each test misconfigures one channel or store against a real counterpart on
loopback (an aiosmtpd server without STARTTLS, an HTTP receiver answering 4xx, a
closed port, an unwritable path, a PostgreSQL cluster refusing a password) and
checks that the message says which ``INSTRUMENT_*`` variable to look at, and never
shows a secret.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from instrument.alerting import AlertManager, AlertRule
from instrument.alerting.channels.base import DeliveryError
from instrument.alerting.state import AlertSeverity
from instrument.backends.email import EmailChannel
from instrument.backends.pagerduty import PagerDutyChannel
from instrument.backends.slack import SlackChannel
from instrument.backends.webhook import WebhookChannel
from instrument.storage.sqlite import StoreOpenError, connect
from tests.alert_receivers import Recorder, http_recorder, smtp_server
from tests.servers import HOST, listening_socket
from tests.test_alert_channels import event, quick


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with http_recorder() as rec:
        yield rec


def test_smtp_without_starttls_says_so_in_log_health_and_history(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The issue's own example, end to end through the manager and the standalone dashboard."""
    from instrument.dashboard import Dashboard
    from instrument.dashboard._http import Request

    with smtp_server(None) as server:  # a local relay that offers no STARTTLS
        expected = (f"SMTP server {server.host}:{server.port} offers no STARTTLS; set"
                    " INSTRUMENT_SMTP_STARTTLS=false for a trusted local relay")
        alerts_db = str(tmp_path / "alerts.db")
        manager = AlertManager(
            db_path=alerts_db, default_rules=False, log_alerts=False,
            metrics_provider=lambda: {"api": {"error_rate_percent": 40.0}},
            environ={"ENABLE_EMAIL_ALERTS": "true", "INSTRUMENT_SMTP_SERVER": server.host,
                     "INSTRUMENT_SMTP_PORT": str(server.port),
                     "INSTRUMENT_ALERT_TO_EMAILS": "ops@x.org"})
        try:
            manager.add_rule(AlertRule("errors", "Errors", AlertSeverity.HIGH,
                                       "api.error_rate_percent > 10"))
            with caplog.at_level(logging.WARNING, logger="instrument.alerts"):
                manager.evaluate()
            health = manager.health()["channels"]["email"]
            history = manager.get_notifications(channel="email")
        finally:
            manager.close()
        assert server.messages == []
    assert expected in caplog.text
    assert expected in health["last_error"]
    assert history and all(expected in n["last_error"] for n in history)
    dashboard = Dashboard(str(tmp_path / "metrics.db"), alerts_db=alerts_db, token="t" * 20,
                          in_process=False)
    try:
        r = dashboard(Request("GET", "/api/v1/monitoring/health",
                              headers={"authorization": "Bearer " + "t" * 20}))
    finally:
        dashboard.close()
    assert any(expected in reason for reason in json.loads(r.body)["reasons"]), r.body


def test_smtp_login_not_offered_names_username_and_password_not_the_password() -> None:
    """A server that takes no login this way: the setting is named, the password is not."""
    with smtp_server(None) as server:  # offers no AUTH at all
        channel = EmailChannel(server.host, server.port, username="a@x.org",
                               password="hunter2-secret", to_emails=["ops@x.org"],
                               starttls=False)
        with pytest.raises(DeliveryError) as info:
            channel.send(event())
    text = str(info.value)
    assert "hunter2-secret" not in text
    assert "takes no login" in text and "INSTRUMENT_SMTP_USERNAME" in text, text
    assert "STARTTLS" not in text


def test_smtp_nothing_listening_names_server_and_port() -> None:
    sock = listening_socket()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused
    channel = EmailChannel(HOST, port, to_emails=["ops@x.org"], timeout=2.0)
    with pytest.raises(DeliveryError) as info:
        channel.send(event())
    assert f"{HOST}:{port} refused the connection" in str(info.value)
    assert "INSTRUMENT_SMTP_SERVER and INSTRUMENT_SMTP_PORT" in str(info.value)


def test_smtp_silent_server_names_the_timeout_setting() -> None:
    sock = listening_socket()  # accepts, never greets
    try:
        channel = EmailChannel(HOST, sock.getsockname()[1], to_emails=["ops@x.org"],
                               timeout=0.3)
        with pytest.raises(DeliveryError) as info:
            channel.send(event())
    finally:
        sock.close()
    assert "timed out" in str(info.value) and "INSTRUMENT_ALERT_HTTP_TIMEOUT" in str(info.value)
    assert not info.value.permanent


@pytest.mark.parametrize(("make", "setting"), [
    (lambda url: SlackChannel(url + "/services/T0/B0/secret-token", http=quick()),
     "INSTRUMENT_SLACK_WEBHOOK_URL"),
    (lambda url: WebhookChannel(url + "/hook/secret-token", http=quick()),
     "INSTRUMENT_ALERT_WEBHOOK_URL"),
    (lambda url: PagerDutyChannel("secret-token", url=url + "/v2/enqueue", http=quick()),
     "INSTRUMENT_PAGERDUTY_ROUTING_KEY"),
])
def test_http_channel_4xx_names_its_setting(recorder: Recorder, make: object,
                                            setting: str) -> None:
    """A 404 (a revoked Slack hook, a wrong webhook path, a bad routing key) names the setting."""
    recorder.respond((404, {}, 0))
    channel = make(recorder.url)  # type: ignore[operator]
    with pytest.raises(DeliveryError) as info:
        channel.send(event())
    assert info.value.permanent
    assert "HTTP 404" in str(info.value) and setting in str(info.value)
    assert "secret-token" not in str(info.value)


def test_http_channel_nothing_listening_names_its_setting() -> None:
    sock = listening_socket()
    port = sock.getsockname()[1]
    sock.close()
    channel = WebhookChannel(f"http://{HOST}:{port}/hook", http=quick(retries=0))
    with pytest.raises(DeliveryError) as info:
        channel.send(event())
    assert "INSTRUMENT_ALERT_WEBHOOK_URL" in str(info.value)
    assert not info.value.permanent


def test_alertmanager_refusing_names_its_url(recorder: Recorder) -> None:
    from instrument.backends.alertmanager import AlertmanagerChannel

    recorder.respond((400, {}, 0))
    channel = AlertmanagerChannel(recorder.url, http=quick())
    with pytest.raises(DeliveryError) as info:
        channel.send(event())
    assert "INSTRUMENT_ALERTMANAGER_URL" in str(info.value)


def test_metrics_db_that_cannot_be_created_names_instrument_metrics_db(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreOpenError) as info:
        connect(str(blocker / "metrics.db"))  # its directory would have to be a file
    assert "INSTRUMENT_METRICS_DB" in str(info.value)
    assert str(blocker / "metrics.db") in str(info.value)


def test_metrics_db_that_is_a_directory_names_instrument_metrics_db(tmp_path: Path) -> None:
    with pytest.raises(StoreOpenError) as info:
        connect(str(tmp_path))
    assert "INSTRUMENT_METRICS_DB" in str(info.value)


def test_the_flusher_reports_the_unopenable_store_in_health(tmp_path: Path) -> None:
    """In an app, the same words reach the health details through the backend's last error."""
    import instrument
    from instrument.core.runtime import runtime
    from tests.servers import wait_until

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    instrument.configure(metrics_db=str(blocker / "metrics.db"), flush_interval=0.05)
    try:
        runtime.recorder.add(("call", 0.0, 0.001, "x", None))
        wait_until(lambda: runtime.stats()["backends"][0]["consecutive_failures"] >= 1,
                   what="a failed write")
        assert "INSTRUMENT_METRICS_DB" in runtime.stats()["backends"][0]["last_error"]
    finally:
        instrument.shutdown(0.2)  # it never recovers: do not wait for it


def test_alerts_db_that_cannot_be_created_names_instrument_alerts_db(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OSError) as info:
        AlertManager(db_path=str(blocker / "alerts.db"), environ={}, default_rules=False)
    assert "INSTRUMENT_ALERTS_DB" in str(info.value)


def test_postgresql_unknown_user_missing_database_and_no_server_name_instrument_storage(
        ) -> None:
    """A real cluster (trust auth, so the wrong user is what it refuses): no password shown."""
    from instrument.storage.postgresql import StoreUnreachable
    from instrument.storage.postgresql import connect as pg_connect
    from tests.pg_cluster import pg_cluster

    with pg_cluster() as pg:
        base = f"127.0.0.1:{pg.port}"
        for url, why in ((f"postgresql://nobody:wrong-pass-123@{base}/postgres", "nobody"),
                         (f"postgresql://postgres:wrong-pass-123@{base}/no_such_database",
                          "no_such_database")):
            with pytest.raises(StoreUnreachable) as info:
                pg_connect(url, timeout=3)
            text = str(info.value)
            assert "INSTRUMENT_STORAGE" in text and why in text, text
            assert "wrong-pass-123" not in text
    sock = listening_socket()
    closed = sock.getsockname()[1]
    sock.close()
    with pytest.raises(StoreUnreachable) as info:
        pg_connect(f"postgresql://u:pw-secret@{HOST}:{closed}/db", timeout=2)
    assert "refused" in str(info.value) and "pw-secret" not in str(info.value)
