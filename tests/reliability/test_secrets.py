"""Secrets never show: not in logs (DEBUG included), reprs, health, the API, the page or the files.

Every secret the kit is given goes in through the environment, the way a
deployment sets it: the SMTP password, the Slack and webhook URLs, the
PagerDuty routing key, the dashboard token and a PostgreSQL password. Then the
kit runs its failure paths on purpose (receivers answering 500, a database that
refuses connections, bad values for secret variables) because error messages
are where secrets leak. Everything observable is captured and searched for
each secret: the captured stdout/stderr and log records at DEBUG, the reprs
and health dicts, every API response and the page, and the bytes of both
SQLite files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import instrument
from instrument import alerting
from instrument.alerting import AlertRule, AlertSeverity
from instrument.config import ConfigError
from instrument.core.runtime import runtime
from instrument.logs import setup_logging
from instrument.startup import monitoring_status
from instrument.wsgi import InstrumentMiddleware
from tests.alert_receivers import http_recorder, smtp_server
from tests.reliability.harness import FIGURES, plain_app
from tests.servers import wait_until, werkzeug_server

SMTP_PASSWORD = "smtp-pw-S3cr3t-5150"
TOKEN = "dash-S3cr3t-token-4242-abcdef"
PAGERDUTY_KEY = "pd-routing-S3cr3t-8b8b"
WEBHOOK_PATH = "/hooks/webhook-S3cr3t-7a7a"
SLACK_PATH = "/services/T000/B000/slack-S3cr3t-9c9c"
PG_PASSWORD = "pg-S3cr3t-6d6d"
SECRETS = [SMTP_PASSWORD, TOKEN, PAGERDUTY_KEY, "webhook-S3cr3t-7a7a", "slack-S3cr3t-9c9c",
           PG_PASSWORD]


class Everything(logging.Handler):
    """Every record at every level, formatted with its arguments and exception text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != "app":  # the app's own plain-text line is checked in the kit's outputs
            self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Iterator[Everything]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    handler = Everything()
    try:
        yield handler
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_no_secret_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capfd: pytest.CaptureFixture[str], captured: Everything) -> None:
    """Secrets are used (mail logs in, hooks get posted) and appear in nothing the kit shows."""
    seen: list[str] = []
    with http_recorder() as hooks, smtp_server(None, password=SMTP_PASSWORD) as smtp:
        hooks.respond(*[(500, {}, 0.0)] * 4)  # each HTTP channel fails first
        env = {"INSTRUMENT_METRICS_DB": str(tmp_path / "metrics.db"),
               "INSTRUMENT_ALERTS_DB": str(tmp_path / "alerts.db"),
               "INSTRUMENT_DASHBOARD_TOKEN": TOKEN, "INSTRUMENT_FLUSH_INTERVAL": "0.05",
               "ENABLE_EMAIL_ALERTS": "true", "SMTP_SERVER": smtp.host,
               "SMTP_PORT": str(smtp.port), "SMTP_USERNAME": "kit", "SMTP_PASSWORD": SMTP_PASSWORD,
               "INSTRUMENT_SMTP_STARTTLS": "false", "ALERT_TO_EMAILS": "ops@example.com",
               "ENABLE_SLACK_ALERTS": "true", "SLACK_WEBHOOK_URL": hooks.url + SLACK_PATH,
               "INSTRUMENT_ALERT_WEBHOOK_URL": hooks.url + WEBHOOK_PATH,
               "INSTRUMENT_PAGERDUTY_ROUTING_KEY": PAGERDUTY_KEY,
               "INSTRUMENT_PAGERDUTY_URL": hooks.url + "/v2/enqueue",
               "INSTRUMENT_ALERT_HTTP_TIMEOUT": "2"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        setup_logging("DEBUG", json=True)
        logging.getLogger().addHandler(captured)
        manager = alerting.get_alert_manager(
            default_rules=False, check_interval=0.2,
            metrics_provider=lambda: {"api": {"error_rate_percent": 50.0}})
        try:
            manager.dispatcher.base_backoff = 0.2
            for channel in manager.dispatcher.channels.values():
                http = getattr(channel, "http", None)
                if http is not None:
                    http.retries = 0
            manager.add_rule(AlertRule("secret_probe", "probe", AlertSeverity.CRITICAL,
                                       "api.error_rate_percent > 5"))
            manager.start_monitoring()
            app = InstrumentMiddleware(plain_app)
            with werkzeug_server(app) as url:
                wait_until(lambda: all(manager.health()["channels"][c]["sent"] for c in
                                       ("email", "slack", "webhook", "pagerduty")), 20,
                           what="every channel delivered after its failure")
                assert smtp.logins == ["kit"]  # the password was used, and accepted
                assert any(r.body.get("routing_key") == PAGERDUTY_KEY for r in hooks.requests
                           if isinstance(r.body, dict))
                logging.getLogger("app").info("login with password=%s", SMTP_PASSWORD)
                requests.get(url + "/work", timeout=5)
                seen += shown_by_dashboard(url)
                assert instrument.flush(10)
            seen += [repr(manager), repr(manager.settings), repr(runtime.settings),
                     repr(runtime.backends), json.dumps(manager.health(), default=str),
                     json.dumps(instrument.stats(), default=str),
                     json.dumps(monitoring_status(), default=str),
                     json.dumps(manager.get_alert_history(limit=1000), default=str),
                     json.dumps(manager.get_notifications(limit=1000), default=str)]
            seen += [repr(c) for c in manager.dispatcher.channels.values()]
        finally:
            alerting.reset_alert_manager()
    seen += storage_failure(tmp_path)
    seen += config_errors()
    runtime.shutdown(0.5)  # the PostgreSQL batch cannot be written; do not wait for it
    out, err = capfd.readouterr()
    seen += [out, err, *captured.lines]
    seen += [(tmp_path / name).read_bytes().decode("latin-1") for name in
             ("metrics.db", "alerts.db")]
    assert any("failed" in line for line in captured.lines)  # the failure paths really ran
    assert any('"POST /… HTTP/1.1" 500' in line for line in captured.lines)  # DEBUG was on
    found = [(s, text[max(0, text.find(s) - 150):text.find(s) + 60])
             for text in seen for s in leaks(text)]
    assert found == [], "\n".join(map(repr, found))
    FIGURES["secrets checked"] += len(SECRETS)
    FIGURES["outputs searched for secrets"] += len(seen)


def shown_by_dashboard(url: str) -> list[str]:
    """Every API answer and the page, with the token, as a signed-in user sees them."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    texts = []
    for sub in ("health", "metrics/summary", "metrics/timeseries", "metrics/system", "routes",
                "alerts", "logs", "openapi.json"):
        r = requests.get(f"{url}/api/v1/monitoring/{sub}", headers=auth, timeout=10)
        assert r.status_code == 200, (sub, r.text[:200])
        texts.append(r.text)
    texts.append(requests.get(url + "/monitoring", headers=auth, timeout=10).text)
    texts.append(requests.get(url + "/monitoring/login", timeout=10).text)
    with requests.Session() as s:  # the form sign-in: cookies must not carry the token
        r = s.post(url + "/monitoring/login", data={"token": TOKEN}, allow_redirects=False,
                   timeout=10)
        assert r.status_code == 303
        texts += [json.dumps(dict(r.headers)), json.dumps(s.cookies.get_dict())]
    return texts


def storage_failure(tmp_path: Path) -> list[str]:
    """A PostgreSQL store that refuses connections: the error is shown, the password is not."""
    instrument.configure(environ={"INSTRUMENT_STORAGE":
                                  f"postgresql://kit:{PG_PASSWORD}@127.0.0.1:1/metrics"},
                         metrics_db=str(tmp_path / "pg-fallback.db"))
    with instrument.timer("pg.probe"):
        pass
    assert not instrument.flush(2.0)
    backend = instrument.stats()["backends"][0]
    assert backend["last_error"]
    return [json.dumps(instrument.stats(), default=str), repr(runtime.backends),
            repr(runtime.settings)]


def config_errors() -> list[str]:
    """Bad values for secret variables: the error names the variable, never the value."""
    texts = []
    for name, value in (("SLACK_WEBHOOK_URL", "ftp://x/slack-S3cr3t-9c9c"),
                        ("INSTRUMENT_ALERT_WEBHOOK_URL", "hooks/webhook-S3cr3t-7a7a"),
                        ("INSTRUMENT_STORAGE", f"mysql://kit:{PG_PASSWORD}@db/x")):
        with pytest.raises(ConfigError) as info:
            if name == "INSTRUMENT_STORAGE":
                instrument.configure(environ={name: value})
            else:
                alerting.AlertManager(environ={name: value}, db_path=":memory:")
        texts.append(str(info.value))
        assert name in str(info.value)
    return texts
