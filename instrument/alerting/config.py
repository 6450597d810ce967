"""Alerting settings: one typed reader over the environment, like :mod:`instrument.config`.

Kept apart from the core ``Settings`` because only the alert manager reads
these, and it reads them when it is built (``get_alert_manager()`` or
``AlertManager()``), never at import time. Seed names (``ALERT_CHECK_INTERVAL``,
``SMTP_SERVER``, ``ENABLE_SLACK_ALERTS``, ...) are aliases of ``INSTRUMENT_*``
names; the ``INSTRUMENT_*`` name wins when both are set. A bad value raises
:class:`~instrument.config.ConfigError` naming the variable and the value
(secrets are named, their values are not shown).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from instrument.alerting.rules import DEFAULT_RULE_NAMES, AlertRule, default_rules, rules_from_json
from instrument.config import (
    ConfigError,
    Variable,
    _bool,
    _int_at_least,
    _positive_float,
    _str,
    brief,
    read_variables,
    shown,
)

__all__ = [
    "ALERT_VARIABLES",
    "AlertSettings",
    "build_channels",
    "configured_rules",
    "email_overrides",
]


def _emails(raw: str) -> tuple[str, ...]:
    items = tuple(p.strip() for p in raw.split(",") if p.strip())
    for item in items:
        if "@" not in item:
            raise ValueError(f"{item!r} is not an email address.")
    return items


def _rule_names(raw: str) -> tuple[str, ...]:
    low = raw.strip().lower()
    if low in ("all", "true", "1", "yes", "on"):
        return DEFAULT_RULE_NAMES
    if low in ("none", "false", "0", "no", "off", ""):
        return ()
    names = tuple(p.strip() for p in raw.split(",") if p.strip())
    unknown = [n for n in names if n not in DEFAULT_RULE_NAMES]
    if unknown:
        raise ValueError(f"Unknown default rules {unknown}; known: {list(DEFAULT_RULE_NAMES)}.")
    return names


def _port(raw: str) -> int:
    value = _int_at_least(1)(raw)
    if value > 65535:
        raise ValueError("Expected a port number 1-65535.")
    return value


def _url(raw: str) -> str:
    value = _str(raw)
    if not value.startswith(("http://", "https://")):
        raise ValueError("Expected an http:// or https:// URL.")
    return value


_V = Variable
ALERT_VARIABLES: tuple[Variable, ...] = (
    _V("alerts_db", "INSTRUMENT_ALERTS_DB", _str, "./instrument-data/alerts.db",
       "SQLite file for alert state, history and the notification outbox.", ("ALERTS_DB_PATH",)),
    _V("check_interval", "INSTRUMENT_ALERT_CHECK_INTERVAL", _positive_float, 60.0,
       "Seconds between rule evaluations.", ("ALERT_CHECK_INTERVAL",)),
    _V("cooldown_period", "INSTRUMENT_ALERT_COOLDOWN_PERIOD", _positive_float, 1800.0,
       "Repeat interval of still-firing alerts for default and configured rules.",
       ("ALERT_COOLDOWN_PERIOD",)),
    _V("flap_window", "INSTRUMENT_ALERT_FLAP_WINDOW", _positive_float, 1800.0,
       "Seconds: re-firing within this window after a resolve marks an alert flapping."),
    _V("default_rules", "INSTRUMENT_ALERT_DEFAULT_RULES", _rule_names, DEFAULT_RULE_NAMES,
       "`all`, `none`, or comma-separated names of the seed's default rules to install."),
    _V("rules", "INSTRUMENT_ALERT_RULES", _str, None,
       "JSON list of threshold rules; an entry named like a default rule tunes it."),
    _V("send_resolved", "INSTRUMENT_ALERT_SEND_RESOLVED", _bool, True,
       "Send a notification when an alert resolves (every channel)."),
    _V("log_alerts", "INSTRUMENT_ALERT_LOG", _bool, True,
       "Log every notification on the `instrument.alerts` logger."),
    _V("enable_email", "INSTRUMENT_ALERT_EMAIL", _bool, False,
       "Send alert email over SMTP.", ("ENABLE_EMAIL_ALERTS",)),
    _V("smtp_server", "INSTRUMENT_SMTP_SERVER", _str, None, "SMTP host.", ("SMTP_SERVER",)),
    _V("smtp_port", "INSTRUMENT_SMTP_PORT", _port, 587, "SMTP port.", ("SMTP_PORT",)),
    _V("smtp_username", "INSTRUMENT_SMTP_USERNAME", _str, None, "SMTP login.",
       ("SMTP_USERNAME",)),
    _V("smtp_password", "INSTRUMENT_SMTP_PASSWORD", _str, None, "SMTP password (secret).",
       ("SMTP_PASSWORD",)),
    _V("smtp_starttls", "INSTRUMENT_SMTP_STARTTLS", _bool, True,
       "Require STARTTLS with certificate checks before login and sending."),
    _V("smtp_ca_file", "INSTRUMENT_SMTP_CA_FILE", _str, None,
       "PEM file of the CA(s) that sign the SMTP server's certificate (default: system CAs)."),
    _V("alert_to_emails", "INSTRUMENT_ALERT_TO_EMAILS", _emails, (),
       "Comma-separated recipients.", ("ALERT_TO_EMAILS",)),
    _V("alert_from_email", "INSTRUMENT_ALERT_FROM_EMAIL", _str, None,
       "Sender address (default: the SMTP username).", ("ALERT_FROM_EMAIL",)),
    _V("enable_slack", "INSTRUMENT_ALERT_SLACK", _bool, False,
       "Post alerts to a Slack incoming webhook.", ("ENABLE_SLACK_ALERTS",)),
    _V("slack_webhook_url", "INSTRUMENT_SLACK_WEBHOOK_URL", _url, None,
       "Slack incoming webhook URL (secret).", ("SLACK_WEBHOOK_URL",)),
    _V("webhook_url", "INSTRUMENT_ALERT_WEBHOOK_URL", _url, None,
       "POST alerts as JSON to this URL (secret)."),
    _V("pagerduty_routing_key", "INSTRUMENT_PAGERDUTY_ROUTING_KEY", _str, None,
       "PagerDuty Events v2 routing key (secret)."),
    _V("pagerduty_url", "INSTRUMENT_PAGERDUTY_URL", _url,
       "https://events.pagerduty.com/v2/enqueue", "PagerDuty Events v2 endpoint."),
    _V("alertmanager_url", "INSTRUMENT_ALERTMANAGER_URL", _url, None,
       "Base URL of a Prometheus Alertmanager to post alerts to."),
    _V("http_timeout", "INSTRUMENT_ALERT_HTTP_TIMEOUT", _positive_float, 10.0,
       "Seconds each channel request (HTTP or SMTP) may take."),
)
_SECRETS = {"smtp_password", "slack_webhook_url", "webhook_url", "pagerduty_routing_key"}


@dataclass(frozen=True)
class AlertSettings:
    """Everything the alert manager reads at start; build it with :meth:`from_env`."""

    alerts_db: str = "./instrument-data/alerts.db"
    check_interval: float = 60.0
    cooldown_period: float = 1800.0
    flap_window: float = 1800.0
    default_rules: tuple[str, ...] = DEFAULT_RULE_NAMES
    rules: str | None = None
    send_resolved: bool = True
    log_alerts: bool = True
    enable_email: bool = False
    smtp_server: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_starttls: bool = True
    smtp_ca_file: str | None = None
    alert_to_emails: tuple[str, ...] = ()
    alert_from_email: str | None = None
    enable_slack: bool = False
    slack_webhook_url: str | None = field(default=None, repr=False)
    webhook_url: str | None = field(default=None, repr=False)
    pagerduty_routing_key: str | None = field(default=None, repr=False)
    pagerduty_url: str = "https://events.pagerduty.com/v2/enqueue"
    alertmanager_url: str | None = None
    http_timeout: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 **overrides: Any) -> AlertSettings:
        """Read every variable from ``environ`` (default ``os.environ``); overrides win."""
        values = read_variables(ALERT_VARIABLES, environ, _SECRETS)
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise ConfigError(f"Unknown alert option {key!r}; known: {sorted(known)}.")
            values[key] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Cross-variable checks: an enabled channel must have what it needs."""
        if self.enable_email and not self.smtp_server:
            raise ConfigError("Config 'ENABLE_EMAIL_ALERTS' is true but 'SMTP_SERVER' is not set.")
        if self.enable_email and not self.alert_to_emails:
            raise ConfigError(
                "Config 'ENABLE_EMAIL_ALERTS' is true but 'ALERT_TO_EMAILS' is not set.")
        if self.enable_slack and not self.slack_webhook_url:
            raise ConfigError(
                "Config 'ENABLE_SLACK_ALERTS' is true but 'SLACK_WEBHOOK_URL' is not set.")


def build_channels(settings: AlertSettings) -> list[Any]:
    """The channels the settings enable, in a fixed order (log first)."""
    from instrument.alerting.channels.alertmanager import AlertmanagerChannel
    from instrument.alerting.channels.email import EmailChannel
    from instrument.alerting.channels.http import HTTPClient
    from instrument.alerting.channels.log import LogChannel
    from instrument.alerting.channels.pagerduty import PagerDutyChannel
    from instrument.alerting.channels.slack import SlackChannel
    from instrument.alerting.channels.webhook import WebhookChannel

    def http() -> HTTPClient:
        return HTTPClient(timeout=settings.http_timeout)

    channels: list[Any] = []
    if settings.log_alerts:
        channels.append(LogChannel())
    if settings.enable_email and settings.smtp_server:
        import ssl  # here: only a mail channel needs it (4.6 MB a process that never mails)

        channels.append(EmailChannel(
            settings.smtp_server, settings.smtp_port, username=settings.smtp_username,
            password=settings.smtp_password, from_email=settings.alert_from_email,
            to_emails=settings.alert_to_emails, starttls=settings.smtp_starttls,
            timeout=settings.http_timeout, ssl_context=None if settings.smtp_ca_file is None
            else ssl.create_default_context(cafile=settings.smtp_ca_file)))
    if settings.enable_slack and settings.slack_webhook_url:
        channels.append(SlackChannel(settings.slack_webhook_url,
                                     http=HTTPClient(timeout=settings.http_timeout, backoff=1.0)))
    if settings.webhook_url:
        channels.append(WebhookChannel(settings.webhook_url, http=http()))
    if settings.pagerduty_routing_key:
        channels.append(PagerDutyChannel(settings.pagerduty_routing_key,
                                         url=settings.pagerduty_url, http=http()))
    if settings.alertmanager_url:
        channels.append(AlertmanagerChannel(settings.alertmanager_url, http=http(),
                                            resend_interval=settings.check_interval))
    return channels


def email_overrides(email_config: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's ``email_config`` dict as setting overrides (it enables email)."""
    keys = {"smtp_server": "smtp_server", "smtp_port": "smtp_port", "username": "smtp_username",
            "password": "smtp_password", "from_email": "alert_from_email",
            "to_emails": "alert_to_emails", "use_tls": "smtp_starttls"}
    unknown = set(email_config) - set(keys)
    if unknown:
        raise ConfigError(f"Unknown email_config keys {sorted(unknown)}; known: {sorted(keys)}.")
    out: dict[str, Any] = {"enable_email": True}
    for key, value in email_config.items():
        if key == "to_emails" and isinstance(value, str):
            value = _emails(value)
        elif key == "to_emails":
            value = tuple(value)
        out[keys[key]] = value
    return out


def configured_rules(settings: AlertSettings) -> dict[str, AlertRule]:
    """The enabled default rules, tuned and extended by ``INSTRUMENT_ALERT_RULES``."""
    s = settings
    every = {r.name: r for r in default_rules(s.cooldown_period, s.flap_window)}
    rules = {n: r for n, r in every.items() if n in s.default_rules}
    if s.rules:
        try:
            extra = rules_from_json(s.rules, every | rules, {
                "cooldown_period": s.cooldown_period, "flap_window": s.flap_window})
        except ValueError as exc:
            raise ConfigError(f"Config 'INSTRUMENT_ALERT_RULES' has value {shown(s.rules)}."
                              f" {brief(exc)}") from None
        rules |= {r.name: r for r in extra}
    for rule in rules.values():
        rule.send_resolved = s.send_resolved
    return rules
