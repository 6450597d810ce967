"""The email channel: SMTP with STARTTLS and certificate checks, several alerts per message.

Takes the seed's ``email_config`` dict (``smtp_server``, ``smtp_port``,
``username``, ``password``, ``from_email``, ``to_emails``) or the ``SMTP_*``
variables. STARTTLS is required by default: a server that does not offer it, or
whose certificate does not verify, gets no mail (and no password) and the
failure is permanent, because retrying cannot fix configuration.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from instrument.alerting.cause import cause_line
from instrument.alerting.channels.base import DEFAULT_KINDS, DeliveryError, summary
from instrument.alerting.state import AlertEvent

__all__ = ["EmailChannel"]


class EmailChannel:
    """Sends alert events by SMTP; batches a cycle's events into one message."""

    name = "email"
    kinds = DEFAULT_KINDS

    def __init__(self, smtp_server: str, smtp_port: int = 587, *, username: str | None = None,
                 password: str | None = None, from_email: str | None = None,
                 to_emails: Sequence[str] = (), starttls: bool = True, timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if not to_emails:
            raise ValueError("EmailChannel needs at least one address in to_emails.")
        self.smtp_server = smtp_server
        self.smtp_port = int(smtp_port)
        self.username = username
        self._password = password
        self.from_email = from_email or username or f"instrument@{socket.getfqdn()}"
        self.to_emails = list(to_emails)
        self.starttls = starttls
        self.timeout = timeout
        self.ssl_context = ssl_context

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **options: Any) -> EmailChannel:
        """Build from the seed's ``email_config`` dict."""
        to = config.get("to_emails") or ()
        if isinstance(to, str):
            to = [t.strip() for t in to.split(",") if t.strip()]
        return cls(config["smtp_server"], int(config.get("smtp_port", 587)),
                   username=config.get("username"), password=config.get("password"),
                   from_email=config.get("from_email"), to_emails=to,
                   starttls=bool(config.get("use_tls", True)), **options)

    def __repr__(self) -> str:
        return (f"EmailChannel(smtp_server={self.smtp_server!r}, smtp_port={self.smtp_port},"
                f" username={self.username!r}, password={'***' if self._password else None},"
                f" to_emails={self.to_emails!r})")

    def send(self, event: AlertEvent) -> None:
        self.send_batch([event])

    def send_batch(self, events: Sequence[AlertEvent]) -> None:
        msg = self._message(events)
        try:
            with smtplib.SMTP(self.smtp_server, self.smtp_port, timeout=self.timeout) as smtp:
                smtp.ehlo()
                if self.starttls:
                    smtp.starttls(context=self.ssl_context or ssl.create_default_context())
                    smtp.ehlo()
                if self.username and self._password:
                    smtp.login(self.username, self._password)
                smtp.send_message(msg)
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(
                f"SMTP server {self._where} failed the certificate check"
                f" ({exc.verify_message}); set INSTRUMENT_SMTP_CA_FILE to the CA that signed it,"
                " or INSTRUMENT_SMTP_STARTTLS=false for a trusted local relay",
                permanent=True) from None
        except smtplib.SMTPNotSupportedError as exc:
            if "AUTH" in str(exc):  # a login was configured, the server takes none
                raise DeliveryError(
                    f"SMTP server {self._where} takes no login; unset INSTRUMENT_SMTP_USERNAME"
                    " and INSTRUMENT_SMTP_PASSWORD, or point INSTRUMENT_SMTP_SERVER at one"
                    " that does", permanent=True) from None
            raise DeliveryError(
                f"SMTP server {self._where} offers no STARTTLS; set"
                " INSTRUMENT_SMTP_STARTTLS=false for a trusted local relay",
                permanent=True) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"SMTP server {self._where} refused the login ({exc.smtp_code}); check"
                " INSTRUMENT_SMTP_USERNAME and INSTRUMENT_SMTP_PASSWORD",
                permanent=exc.smtp_code >= 500) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(
                f"SMTP server {self._where} refused every recipient {codes}; check"
                " INSTRUMENT_ALERT_TO_EMAILS", permanent=all(c >= 500 for c in codes)) from None
        except smtplib.SMTPSenderRefused as exc:
            if exc.smtp_code == 530:  # MAIL FROM refused until we log in (or start TLS)
                raise self._wants(exc) from None
            raise DeliveryError(
                f"SMTP server {self._where} refused the sender {self.from_email!r}"
                f" ({exc.smtp_code}); set INSTRUMENT_ALERT_FROM_EMAIL to an address it accepts",
                permanent=exc.smtp_code >= 500) from None
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode(errors="replace") if isinstance(
                exc.smtp_error, bytes) else str(exc.smtp_error)
            if exc.smtp_code == 530:
                raise self._wants(exc) from None
            raise DeliveryError(f"SMTP server {self._where} answered {exc.smtp_code}:"
                                f" {text[:200]}", permanent=exc.smtp_code >= 500) from None
        except (TimeoutError, smtplib.SMTPServerDisconnected) as exc:
            if not isinstance(exc, TimeoutError) and "timed out" not in str(exc):
                raise DeliveryError(f"SMTP server {self._where} closed the connection:"
                                    f" {exc}"[:300]) from None
            # smtplib turns a read timeout into "Connection unexpectedly closed: timed out"
            raise DeliveryError(
                f"SMTP server {self._where} timed out (no answer within {self.timeout:g} s);"
                " check INSTRUMENT_SMTP_SERVER and INSTRUMENT_SMTP_PORT, or raise"
                " INSTRUMENT_ALERT_HTTP_TIMEOUT") from None
        except (ConnectionRefusedError, socket.gaierror) as exc:
            why = ("refused the connection (ConnectionRefusedError)"
                   if isinstance(exc, ConnectionRefusedError)
                   else "is not a host name this machine can resolve")
            raise DeliveryError(f"SMTP server {self._where} {why}; check"
                                " INSTRUMENT_SMTP_SERVER and INSTRUMENT_SMTP_PORT") from None
        except (OSError, smtplib.SMTPException) as exc:  # these never carry the password
            raise DeliveryError(f"SMTP error from {self._where}: {type(exc).__name__}:"
                                f" {exc}"[:300]) from None

    @property
    def _where(self) -> str:
        return f"{self.smtp_server}:{self.smtp_port}"

    def _wants(self, exc: smtplib.SMTPResponseException) -> DeliveryError:
        """A 530: the server wants something first; which one its text says.

        smtplib raises it as SMTPSenderRefused when it answers MAIL FROM, which
        would otherwise blame the sender address.
        """
        raw = exc.smtp_error
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        if "TLS" in text.upper():
            return DeliveryError(f"SMTP server {self._where} requires STARTTLS (530); set"
                                 " INSTRUMENT_SMTP_STARTTLS=true", permanent=True)
        return DeliveryError(f"SMTP server {self._where} requires a login (530); set"
                             " INSTRUMENT_SMTP_USERNAME and INSTRUMENT_SMTP_PASSWORD",
                             permanent=True)

    def _message(self, events: Sequence[AlertEvent]) -> EmailMessage:
        msg = EmailMessage()
        firing = sum(1 for e in events if e.firing)
        if len(events) == 1:
            msg["Subject"] = summary(events[0])
        else:
            msg["Subject"] = (f"[instrument] {len(events)} alert notifications:"
                              f" {firing} firing, {len(events) - firing} resolved")
        msg["From"] = self.from_email
        msg["To"] = ", ".join(self.to_emails)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain="instrument.alerts")
        msg.set_content("\n\n".join(_body(e) for e in events) + "\n")
        return msg


def _body(event: AlertEvent) -> str:
    a = event.alert
    lines = [summary(event), f"  alert id:  {a.id}", f"  severity:  {a.severity.value}",
             f"  started:   {a.created_at.isoformat()}"]
    if a.resolved_at is not None and event.kind == "resolved":
        lines.append(f"  resolved:  {a.resolved_at.isoformat()}")
    if "threshold" in a.metadata:
        lines.append(f"  condition: {a.metadata['threshold']}")
    cause = cause_line(a.metadata)
    if cause:
        lines.append(f"  {cause}")
    return "\n".join(lines)
