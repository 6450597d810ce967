"""Alert delivery faults while the app is under load: receivers down, failing, slow, then back.

The process-wide alert manager (the one the dashboard's health reads) runs in
the app's process with one rule that fires at once, evaluating every 0.2 s,
and its outbox retries after 0.2-1 s instead of 15 s-15 min so a test takes
seconds. Each receiver is real: aiosmtpd, an HTTP recorder, Debian's
Alertmanager. While a receiver is down, requests keep being answered, the
health endpoint names the failing channel, the failed attempts are in the
alert history, and the notification arrives by itself once the receiver is up.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from instrument import alerting
from instrument.alerting import AlertManager, AlertRule, AlertSeverity
from instrument.alerting.channels.http import HTTPClient
from instrument.backends.webhook import WebhookChannel
from tests.alert_receivers import http_recorder
from tests.reliability.harness import FIGURES, Load, Served, reasons, served_app, wait_health
from tests.servers import HOST, wait_until
from tests.test_alertmanager import am_alerts, running_alertmanager

RULE = "reliability_probe"


@contextlib.contextmanager
def alerting_app(tmp_path: Path, environ: dict[str, str] | None = None,
                 channels: tuple[Any, ...] = ()) -> Iterator[tuple[Served, AlertManager, Load]]:
    """The app under load plus the process-wide alert manager with one rule already true."""
    with served_app(tmp_path / "metrics.db") as app:
        manager = alerting.get_alert_manager(
            db_path=str(tmp_path / "alerts.db"), default_rules=False, log_alerts=False,
            check_interval=0.2, environ=environ or {}, channels=channels,
            metrics_provider=lambda: {"api": {"error_rate_percent": 50.0}})
        manager.dispatcher.base_backoff = 0.2
        manager.dispatcher.max_backoff = 1.0
        manager.dispatcher.max_attempts = 100
        manager.add_rule(AlertRule(RULE, "error rate above 5%", AlertSeverity.HIGH,
                                   "api.error_rate_percent > 5"))
        try:
            with Load(app.url) as load:
                manager.start_monitoring()
                yield app, manager, load
        finally:
            alerting.reset_alert_manager()


def failures(manager: AlertManager) -> list[str]:
    return [h["detail"] for h in manager.get_alert_history(limit=500)
            if h["event"] == "notification_failed"]


def finish(app: Served, manager: AlertManager, load: Load, channel: str) -> None:
    """Recovered: health is ok again, the thread runs, every request was answered and stored."""
    wait_health(app, lambda b: b["status"] == "ok", what=f"{channel} recovered in health")
    assert manager.running
    assert manager.health()["channels"][channel]["sent"] >= 1
    load.more(20)
    assert not load.bad and not app.guard.escaped
    FIGURES["faults injected and survived"] += 1
    FIGURES["requests answered during fault tests"] += load.ok


class _Controller(Controller):
    """aiosmtpd on a socket that was bound (but refusing connections) while 'down'."""

    def __init__(self, handler: Any, sock: socket.socket) -> None:
        self._sock = sock
        super().__init__(handler, hostname=HOST, port=sock.getsockname()[1])

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)


def test_smtp_down_then_up(tmp_path: Path, thread_errors: list[str]) -> None:
    """Mail fails while nothing listens on the SMTP port, then goes out once a server is there."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))  # bound, not listening: connections are refused ("down")
    received: list[Envelope] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
            received.append(envelope)
            return "250 OK"

    env = {"INSTRUMENT_ALERT_EMAIL": "true", "INSTRUMENT_SMTP_SERVER": HOST,
           "INSTRUMENT_SMTP_PORT": str(sock.getsockname()[1]), "INSTRUMENT_SMTP_STARTTLS": "false",
           "INSTRUMENT_ALERT_TO_EMAILS": "ops@example.com", "INSTRUMENT_ALERT_HTTP_TIMEOUT": "2"}
    controller = None
    try:
        with alerting_app(tmp_path, env) as (app, manager, load):
            body = wait_health(app, lambda b: "alert channel 'email' is failing" in reasons(b),
                               what="the email channel in health")
            assert body["status"] == "degraded"
            wait_until(lambda: len(failures(manager)) >= 2, what="two failed attempts")
            assert "ConnectionRefusedError" in failures(manager)[0]
            load.more(50)
            assert received == []
            controller = _Controller(Handler(), sock)
            controller.start()  # the server comes up on the same port
            wait_until(lambda: received, 15, what="the alert mail")
            assert RULE in received[0].content.decode()  # type: ignore[union-attr]
            finish(app, manager, load, "email")
    finally:
        if controller is not None:
            controller.stop()
        sock.close()
    assert not thread_errors


def test_webhook_500_then_429_then_hanging(tmp_path: Path, thread_errors: list[str]) -> None:
    """A webhook answering 500, then 429 (Retry-After: 1), then hanging past the timeout."""
    with http_recorder() as hook:
        hook.respond((500, {}, 0.0), (429, {"Retry-After": "1"}, 0.0), (200, {}, 2.0))
        channel = WebhookChannel(hook.url + "/hook", http=HTTPClient(timeout=0.5, retries=0))
        with alerting_app(tmp_path, channels=(channel,)) as (app, manager, load):
            wait_health(app, lambda b: "alert channel 'webhook' is failing" in reasons(b),
                        what="the webhook channel in health")
            hook.wait_for(4, timeout=20)
            wait_until(lambda: manager.health()["channels"]["webhook"]["sent"] >= 1, 15,
                       what="delivery")
            seen = failures(manager)[::-1]  # oldest first
            assert "HTTP 500" in seen[0] and "HTTP 429" in seen[1]
            assert "timeout after 0.5s" in seen[2]
            gap = hook.requests[2].at - hook.requests[1].at
            assert gap >= 0.95  # Retry-After honoured
            assert hook.requests[3].body["alerts"][0]["labels"]["alertname"] == RULE
            finish(app, manager, load, "webhook")
    assert not thread_errors


def test_alertmanager_down_then_up(tmp_path: Path, thread_errors: list[str]) -> None:
    """Posts to an Alertmanager that is not running fail; once it starts, the alert is there."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    env = {"INSTRUMENT_ALERTMANAGER_URL": f"http://{HOST}:{port}",
           "INSTRUMENT_ALERT_HTTP_TIMEOUT": "1"}
    with http_recorder() as hook, alerting_app(tmp_path, env) as (app, manager, load):
        manager.dispatcher.channels["alertmanager"].http.retries = 0
        wait_health(app, lambda b: "alert channel 'alertmanager' is failing" in reasons(b),
                    what="the alertmanager channel in health")
        assert "ConnectionError" in failures(manager)[-1]
        load.more(50)
        started = time.monotonic()
        with running_alertmanager(tmp_path, hook, port=port) as url:
            active = wait_until(lambda: am_alerts(url), 30, what="the alert in Alertmanager")
            assert active[0]["labels"]["alertname"] == RULE
            finish(app, manager, load, "alertmanager")
        assert time.monotonic() - started < 30
    assert not thread_errors
