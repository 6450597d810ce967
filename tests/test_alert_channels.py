"""Alert channels against real receivers on loopback: SMTP (aiosmtpd) and HTTP servers.

Covers STARTTLS with certificate checks, Slack's 429/Retry-After and one message
a second, retries on 500 and timeouts, no retry on other 4xx, PagerDuty's
trigger/acknowledge/resolve, and the manager delivering through them.
"""

from __future__ import annotations

import email
import itertools
import json
import logging
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from instrument.alerting import AlertManager, AlertRule
from instrument.alerting.channels.base import DeliveryError
from instrument.alerting.channels.http import HTTPClient, parse_retry_after
from instrument.alerting.state import Alert, AlertEvent, AlertSeverity
from instrument.backends.email import EmailChannel
from instrument.backends.pagerduty import PagerDutyChannel
from instrument.backends.slack import SlackChannel
from instrument.backends.webhook import WebhookChannel
from tests.alert_receivers import Recorder, TLSFiles, http_recorder, make_tls, smtp_server
from tests.servers import HOST, listening_socket

PASSWORD = "s3cret-smtp-pass"


def event(kind: str = "firing", name: str = "high_cpu", alert_id: str = "a1") -> AlertEvent:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    alert = Alert(alert_id, name, "CPU usage above 80%", AlertSeverity.CRITICAL,
                  "resolved" if kind == "resolved" else "firing", now, now,
                  resolved_at=now if kind == "resolved" else None,
                  metadata={"value": 93.5, "threshold": "system.cpu_percent > 80"})
    return AlertEvent(kind, alert, now.timestamp())


def quick(**kw: Any) -> HTTPClient:
    """An HTTP client with short backoff so retry tests stay fast."""
    kw.setdefault("timeout", 2.0)
    kw.setdefault("backoff", 0.05)
    return HTTPClient(**kw)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with http_recorder() as rec:
        yield rec


def parsed(envelope: Any) -> Message:
    return email.message_from_bytes(envelope.original_content)


# -- email -----------------------------------------------------------------------------------

def test_email_over_starttls_with_login(tls: TLSFiles) -> None:
    """Mail goes out after STARTTLS verified against the CA, then AUTH, to every recipient."""
    with smtp_server(tls, password=PASSWORD) as server:
        channel = EmailChannel.from_config(
            {"smtp_server": server.host, "smtp_port": server.port, "username": "alerts@x.org",
             "password": PASSWORD, "from_email": "alerts@x.org",
             "to_emails": ["ops@x.org", "dev@x.org"]}, ssl_context=tls.client_context())
        channel.send(event())
        [mail] = server.messages
    msg = parsed(mail)
    assert server.logins == ["alerts@x.org"]
    assert sorted(mail.rcpt_tos) == ["dev@x.org", "ops@x.org"]
    assert msg["Subject"] == "[FIRING] high_cpu (critical): CPU usage above 80% [value 93.5]"
    assert "system.cpu_percent > 80" in msg.get_payload()
    assert PASSWORD not in repr(channel)


def test_email_batches_a_cycle_into_one_message(tls: TLSFiles) -> None:
    """Several alert events become one email listing each of them."""
    with smtp_server(tls) as server:
        channel = EmailChannel(server.host, server.port, to_emails=["ops@x.org"],
                               ssl_context=tls.client_context())
        channel.send_batch([event(), event("resolved", "low_disk_space", "a2")])
        [mail] = server.messages
    msg = parsed(mail)
    assert msg["Subject"] == "[instrument] 2 alert notifications: 1 firing, 1 resolved"
    body = msg.get_payload()
    assert "[FIRING] high_cpu" in body and "[RESOLVED] low_disk_space" in body


def test_email_refuses_an_untrusted_certificate(tls: TLSFiles) -> None:
    """A certificate the client does not trust is a permanent failure; nothing is sent."""
    with smtp_server(tls, password=PASSWORD) as server:
        channel = EmailChannel(server.host, server.port, username="a@x.org", password=PASSWORD,
                               to_emails=["ops@x.org"])  # system CAs only
        with pytest.raises(DeliveryError) as info:
            channel.send(event())
        assert server.messages == [] and server.logins == []
    assert info.value.permanent and "certificate" in str(info.value)


def test_email_without_starttls_offer_sends_nothing() -> None:
    """A server without STARTTLS gets neither the password nor the mail."""
    with smtp_server(None) as server:
        channel = EmailChannel(server.host, server.port, username="a@x.org", password=PASSWORD,
                               to_emails=["ops@x.org"])
        with pytest.raises(DeliveryError) as info:
            channel.send(event())
        assert server.messages == []
    assert info.value.permanent and "STARTTLS" in str(info.value)


def test_email_timeout_is_a_transient_failure() -> None:
    """A server that accepts but never greets times out within the channel's timeout."""
    sock = listening_socket()
    try:
        channel = EmailChannel(HOST, sock.getsockname()[1], to_emails=["ops@x.org"], timeout=0.3)
        started = time.monotonic()
        with pytest.raises(DeliveryError) as info:
            channel.send(event())
        assert time.monotonic() - started < 5
    finally:
        sock.close()
    assert not info.value.permanent and "timed out" in str(info.value)


def test_manager_sends_email_from_the_seed_email_config(tls: TLSFiles, tmp_path: Path) -> None:
    """AlertManager(email_config=...) takes the seed's dict and mails firing alerts."""
    with smtp_server(tls, password=PASSWORD) as server:
        manager = AlertManager(
            db_path=str(tmp_path / "alerts.db"), environ={}, default_rules=False,
            metrics_provider=lambda: {"app": {"queue_size": 500}},
            email_config={"smtp_server": server.host, "smtp_port": server.port,
                          "username": "alerts@x.org", "password": PASSWORD,
                          "from_email": "alerts@x.org", "to_emails": ["ops@x.org"]})
        try:
            manager.dispatcher.channels["email"].ssl_context = tls.client_context()  # type: ignore[attr-defined]
            manager.add_rule(AlertRule("queue", "Queue backing up", AlertSeverity.MEDIUM,
                                       "app.queue_size > 100"))
            manager.evaluate()
            assert manager.health()["channels"]["email"]["sent"] == 1
        finally:
            manager.close()
        [mail] = server.messages
    assert parsed(mail)["Subject"].startswith("[FIRING] queue (medium)")


def test_manager_sends_email_configured_by_seed_variables(tls: TLSFiles, tmp_path: Path) -> None:
    """ENABLE_EMAIL_ALERTS with the seed's SMTP_* variables mails a firing alert."""
    with smtp_server(tls, password=PASSWORD) as server:
        env = {"ENABLE_EMAIL_ALERTS": "true", "SMTP_SERVER": server.host,
               "SMTP_PORT": str(server.port), "SMTP_USERNAME": "alerts@x.org",
               "SMTP_PASSWORD": PASSWORD, "ALERT_TO_EMAILS": "admin@x.org,ops@x.org",
               "INSTRUMENT_SMTP_CA_FILE": str(tls.ca)}
        manager = AlertManager(db_path=str(tmp_path / "alerts.db"), environ=env,
                               default_rules=False, log_alerts=False,
                               metrics_provider=lambda: {"api": {"error_rate_percent": 12.0}})
        try:
            manager.add_rule(AlertRule("errors", "Error rate high", AlertSeverity.HIGH,
                                       "api.error_rate_percent > 10"))
            manager.evaluate()
        finally:
            manager.close()
        [mail] = server.messages
    assert server.logins == ["alerts@x.org"] and mail.mail_from == "alerts@x.org"
    assert sorted(mail.rcpt_tos) == ["admin@x.org", "ops@x.org"]
    assert PASSWORD not in repr(manager.settings)


# -- HTTP retry policy -----------------------------------------------------------------------

def test_retry_after_header_forms() -> None:
    """Retry-After is read as delta-seconds or an HTTP date."""
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 01 May 2024 12:00:10 GMT", now=1714564800.0) == 10.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_http_500_is_retried_with_backoff(recorder: Recorder) -> None:
    """5xx answers are retried until one succeeds."""
    recorder.respond((500, {}, 0), (503, {}, 0))
    hook = WebhookChannel(recorder.url + "/hook", http=quick(retries=2))
    hook.send(event())
    assert [r.path for r in recorder.wait_for(3)] == ["/hook"] * 3


def test_http_4xx_is_not_retried(recorder: Recorder) -> None:
    """A 400 is permanent: one request, and the error says so."""
    recorder.respond((400, {}, 0))
    hook = WebhookChannel(recorder.url + "/hook", http=quick(retries=3))
    with pytest.raises(DeliveryError) as info:
        hook.send(event())
    assert info.value.permanent and "HTTP 400" in str(info.value)
    assert len(recorder.requests) == 1


def test_http_timeout_is_retried(recorder: Recorder) -> None:
    """A receiver that hangs past the timeout is retried; the retry succeeds."""
    recorder.respond((200, {}, 1.5))
    hook = WebhookChannel(recorder.url + "/hook", http=quick(timeout=0.3, retries=1))
    hook.send(event())
    assert len(recorder.wait_for(2)) == 2


def test_http_failure_after_retries_is_transient_and_hides_the_url(recorder: Recorder) -> None:
    """Exhausted retries raise a transient error that names the host, not the secret path."""
    recorder.respond((502, {}, 0), (502, {}, 0))
    hook = WebhookChannel(recorder.url + "/secret-token-path", http=quick(retries=1))
    with pytest.raises(DeliveryError) as info:
        hook.send(event())
    assert not info.value.permanent and "HTTP 502" in str(info.value)
    assert "secret-token-path" not in str(info.value) and "secret" not in repr(hook)


def test_webhook_payload_is_alertmanager_shaped(recorder: Recorder) -> None:
    """The generic webhook posts version/status/alerts with labels, annotations and times."""
    hook = WebhookChannel(recorder.url + "/hook", headers={"Authorization": "Bearer tok"})
    hook.send_batch([event(), event("resolved", "low_disk_space", "a2")])
    [req] = recorder.wait_for(1)
    body = req.body
    assert body["status"] == "firing" and req.headers["Authorization"] == "Bearer tok"
    first, second = body["alerts"]
    assert first["labels"] == {"alertname": "high_cpu", "severity": "critical"}
    assert first["annotations"]["value"] == "93.5" and first["endsAt"] is None
    assert second["status"] == "resolved" and second["endsAt"] == "2024-05-01T12:00:00+00:00"


# -- Slack -----------------------------------------------------------------------------------

def test_slack_honours_429_retry_after(recorder: Recorder) -> None:
    """Slack's 429 with Retry-After: 1 is waited out, then the message is delivered."""
    recorder.respond((429, {"Retry-After": "1"}, 0))
    slack = SlackChannel(recorder.url + "/services/T/B/X", http=quick(retries=2))
    slack.send(event())
    first, second = recorder.wait_for(2)
    assert second.at - first.at >= 0.95
    assert second.body["text"].startswith("[FIRING] high_cpu")


def test_slack_long_retry_after_is_left_to_the_outbox(recorder: Recorder) -> None:
    """A Retry-After longer than the channel may block raises with retry_after set."""
    recorder.respond((429, {"Retry-After": "120"}, 0))
    slack = SlackChannel(recorder.url + "/services/T/B/X", http=quick(retries=2))
    with pytest.raises(DeliveryError) as info:
        slack.send(event())
    assert info.value.retry_after == 120 and len(recorder.requests) == 1


def test_slack_sends_at_most_one_message_a_second(recorder: Recorder) -> None:
    """Consecutive Slack messages are spaced by at least a second."""
    slack = SlackChannel(recorder.url + "/services/T/B/X", max_per_message=1)
    slack.send_batch([event(alert_id="a1"), event(alert_id="a2"), event(alert_id="a3")])
    times = [r.at for r in recorder.wait_for(3)]
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(times))


def test_slack_batches_alerts_into_one_message(recorder: Recorder) -> None:
    """Alerts of one cycle arrive as one message with an attachment each."""
    slack = SlackChannel(recorder.url + "/services/T/B/X")
    slack.send_batch([event(), event("resolved", "low_disk_space", "a2"),
                      event(name="high_error_rate", alert_id="a3")])
    [req] = recorder.wait_for(1)
    assert req.body["text"] == "3 alert notifications: 2 firing, 1 resolved"
    assert [a["color"] for a in req.body["attachments"]] == ["#8B0000", "good", "#8B0000"]


def test_manager_delivers_to_slack_from_environment(recorder: Recorder, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """ENABLE_SLACK_ALERTS + SLACK_WEBHOOK_URL: one cycle's alerts in one Slack message."""
    url = recorder.url + "/services/T0/B0/very-secret"
    metrics = {"system": {"cpu_percent": 99.0, "memory_percent": 97.0}}
    manager = AlertManager(
        db_path=str(tmp_path / "alerts.db"), default_rules=False, metrics_provider=lambda: metrics,
        environ={"ENABLE_SLACK_ALERTS": "true", "SLACK_WEBHOOK_URL": url})
    try:
        manager.add_rule(AlertRule("cpu", "CPU", AlertSeverity.HIGH, "system.cpu_percent > 80"))
        manager.add_rule(AlertRule("mem", "Mem", AlertSeverity.CRITICAL,
                                   "system.memory_percent > 90"))
        with caplog.at_level(logging.INFO, logger="instrument.alerts"):
            manager.evaluate()
        [req] = recorder.wait_for(1)
        assert len(req.body["attachments"]) == 2
        assert [n["status"] for n in manager.get_notifications(channel="slack")] == ["sent"] * 2
        assert "very-secret" not in repr(manager) + caplog.text + json.dumps(manager.health())
        assert "[FIRING] cpu (high)" in caplog.text  # the log channel is on by default
    finally:
        manager.close()


def test_manager_records_webhook_failures_and_retries_later(recorder: Recorder,
                                                            tmp_path: Path) -> None:
    """A webhook answering 500 leaves the notification queued with its error, then delivers."""
    now = [1_700_000_000.0]
    recorder.respond(*[(500, {}, 0)] * 3)
    manager = AlertManager(
        db_path=str(tmp_path / "alerts.db"), environ={}, default_rules=False, log_alerts=False,
        clock=lambda: now[0], metrics_provider=lambda: {"api": {"error_rate_percent": 40}},
        channels=[WebhookChannel(recorder.url + "/hook", http=quick(retries=2))])
    try:
        manager.add_rule(AlertRule("errors", "Errors", AlertSeverity.HIGH,
                                   "api.error_rate_percent > 10", cooldown_period=0))
        manager.evaluate()
        [note] = manager.get_notifications()
        assert note["status"] == "queued" and "HTTP 500" in note["last_error"]
        assert manager.health()["channels"]["webhook"]["failures"] == 1
        now[0] += 20
        manager.evaluate()
        assert manager.get_notifications()[0]["status"] == "sent"
        assert len(recorder.requests) == 4
    finally:
        manager.close()


# -- PagerDuty -------------------------------------------------------------------------------

def test_pagerduty_trigger_acknowledge_resolve_share_a_dedup_key(recorder: Recorder) -> None:
    """Events v2: trigger with payload, then acknowledge and resolve on the same dedup_key."""
    pd = PagerDutyChannel("R0UT1NGKEY", url=recorder.url + "/v2/enqueue", source="web-1")
    for kind in ("firing", "acknowledged", "resolved"):
        pd.send(event(kind))
    trigger, ack, resolve = (r.body for r in recorder.wait_for(3))
    assert [b["event_action"] for b in (trigger, ack, resolve)] == \
        ["trigger", "acknowledge", "resolve"]
    assert {b["dedup_key"] for b in (trigger, ack, resolve)} == {"a1"}
    assert trigger["routing_key"] == "R0UT1NGKEY"
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["source"] == "web-1"
    assert "R0UT1NGKEY" not in repr(pd)


def test_pagerduty_429_is_retried(recorder: Recorder) -> None:
    """PagerDuty's 429 (rate limited) is retried rather than dropped."""
    recorder.respond((429, {}, 0))
    pd = PagerDutyChannel("key", url=recorder.url + "/v2/enqueue", http=quick(retries=1))
    pd.send(event())
    assert len(recorder.wait_for(2)) == 2


def test_unreachable_receiver_is_a_transient_error() -> None:
    """Connection refused is retried later, and the message names only the host."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    hook = WebhookChannel(f"http://{HOST}:{port}/token-abc", http=quick(retries=0))
    with pytest.raises(DeliveryError) as info:
        hook.send(event())
    assert not info.value.permanent and "token-abc" not in str(info.value)
