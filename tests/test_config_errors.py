"""Failures a user causes by configuration name the setting to change (issue 17).

Each test misconfigures one channel or store against a real counterpart on
loopback (an aiosmtpd server without STARTTLS or refusing a login, an HTTP
receiver answering 4xx, a closed port, an unwritable path, a PostgreSQL cluster
refusing a password) and checks that the message says which ``INSTRUMENT_*``
variable to look at, and never shows a secret. Channels are built from the
environment the way the alert manager builds them, so a named variable is one the
kit really reads; where it is cheap, the advice is then followed and must work.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

import instrument
from instrument.alerting import AlertManager, AlertRule
from instrument.alerting.channels.base import DeliveryError
from instrument.alerting.config import AlertSettings, build_channels
from instrument.alerting.state import AlertSeverity
from instrument.backends.email import EmailChannel
from instrument.backends.slack import SlackChannel
from instrument.backends.webhook import WebhookChannel
from instrument.core.runtime import runtime
from instrument.dashboard._health import DropWatch, in_process
from instrument.storage.postgresql import StoreUnreachable
from instrument.storage.postgresql import connect as pg_connect
from instrument.storage.sqlite import StoreOpenError, connect
from tests.alert_receivers import (
    Recorder,
    TLSFiles,
    _Controller,
    http_recorder,
    make_tls,
    smtp_server,
)
from tests.pg_cluster import PgCluster, pg_cluster
from tests.servers import HOST, listening_socket, wait_until
from tests.test_alert_channels import event, quick


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with http_recorder() as rec:
        yield rec


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed): connection refused."""
    sock = listening_socket()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def from_env(env: dict[str, str]) -> Any:
    """The one channel ``env`` enables, built exactly as the alert manager builds it."""
    settings = AlertSettings.from_env({"INSTRUMENT_ALERT_LOG": "false",
                                       "INSTRUMENT_ALERT_HTTP_TIMEOUT": "3", **env})
    [channel] = build_channels(settings)
    return channel


def smtp_env(port: int, **extra: str) -> dict[str, str]:
    return {"INSTRUMENT_ALERT_EMAIL": "true", "INSTRUMENT_SMTP_SERVER": HOST,
            "INSTRUMENT_SMTP_PORT": str(port), "INSTRUMENT_ALERT_TO_EMAILS": "ops@x.org",
            **extra}


def failure(channel: Any) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        channel.send(event())
    return info.value


@contextmanager
def smtp_with(handler: Any, **options: Any) -> Iterator[int]:
    """aiosmtpd with a handler of the test's own (refusing a sender, a recipient...)."""
    sock = listening_socket()
    controller = _Controller(handler, sock, **options)
    controller.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        controller.stop()


class Accepting:
    """Takes every message; the tests' handlers refuse one step before DATA."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


# -- email -----------------------------------------------------------------------------------

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
            default_rules=False, log_alerts=False,
            metrics_provider=lambda: {"api": {"error_rate_percent": 40.0}},
            environ={"INSTRUMENT_ALERTS_DB": alerts_db, **smtp_env(server.port)})
        try:
            manager.add_rule(AlertRule("errors", "Errors", AlertSeverity.HIGH,
                                       "api.error_rate_percent > 10"))
            with caplog.at_level(logging.WARNING, logger="instrument.alerts"):
                manager.evaluate()
            health = manager.health()["channels"]["email"]
            outbox = manager.get_notifications(channel="email")
            history = [h for h in manager.get_alert_history(rule="errors")
                       if h["event"] == "notification_failed"]
        finally:
            manager.close()
        assert server.messages == []
    assert expected in caplog.text
    assert expected in health["last_error"]
    assert outbox and all(expected in n["last_error"] and n["status"] == "failed"
                          for n in outbox)  # permanent: given up at once
    assert history and expected in history[0]["detail"]
    dashboard = Dashboard(str(tmp_path / "metrics.db"), alerts_db=alerts_db, token="t" * 20,
                          in_process=False)
    try:
        r = dashboard(Request("GET", "/api/v1/monitoring/health",
                              headers={"authorization": "Bearer " + "t" * 20}))
    finally:
        dashboard.close()
    assert any(expected in reason for reason in json.loads(r.body)["reasons"]), r.body
    # ... and the advice works: the same relay takes the mail without STARTTLS.
    with smtp_server(None) as server:
        from_env(smtp_env(server.port, INSTRUMENT_SMTP_STARTTLS="false")).send(event())
        assert len(server.messages) == 1


def test_smtp_certificate_that_does_not_verify_names_the_ca_file(tls: TLSFiles) -> None:
    with smtp_server(tls) as server:  # signed by a CA the system does not trust
        error = failure(from_env(smtp_env(server.port)))
        assert error.permanent and str(error) == (
            f"SMTP server {HOST}:{server.port} failed the certificate check (unable to get"
            " local issuer certificate); set INSTRUMENT_SMTP_CA_FILE to the CA that signed it,"
            " or INSTRUMENT_SMTP_STARTTLS=false for a trusted local relay")
        from_env(smtp_env(server.port, INSTRUMENT_SMTP_CA_FILE=str(tls.ca))).send(event())
        assert len(server.messages) == 1


def test_smtp_wrong_password_names_username_and_password_never_the_password(
        tls: TLSFiles) -> None:
    with smtp_server(tls, password="right-pass-123") as server:
        env = smtp_env(server.port, INSTRUMENT_SMTP_CA_FILE=str(tls.ca),
                       INSTRUMENT_SMTP_USERNAME="alerts@x.org",
                       INSTRUMENT_SMTP_PASSWORD="wrong-pass-456")
        error = failure(from_env(env))
        assert str(error) == (f"SMTP server {HOST}:{server.port} refused the login (535);"
                              " check INSTRUMENT_SMTP_USERNAME and INSTRUMENT_SMTP_PASSWORD")
        assert error.permanent and "pass-456" not in str(error)
        from_env({**env, "INSTRUMENT_SMTP_PASSWORD": "right-pass-123"}).send(event())
        assert server.logins == ["alerts@x.org"] and len(server.messages) == 1


def test_smtp_login_required_but_not_configured_names_username_and_password(
        tls: TLSFiles) -> None:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.password == b"right-pass-123"
        return AuthResult(success=ok, handled=False)

    handler = Accepting()
    with smtp_with(handler, tls_context=tls.server_context(), require_starttls=True,
                   auth_required=True, auth_require_tls=True,
                   authenticator=authenticator) as port:  # answers MAIL FROM with 530
        env = smtp_env(port, INSTRUMENT_SMTP_CA_FILE=str(tls.ca))
        error = failure(from_env(env))
        assert error.permanent and str(error) == (
            f"SMTP server {HOST}:{port} requires a login (530); set INSTRUMENT_SMTP_USERNAME"
            " and INSTRUMENT_SMTP_PASSWORD")
        assert "INSTRUMENT_ALERT_FROM_EMAIL" not in str(error)  # not the sender's fault
        from_env({**env, "INSTRUMENT_SMTP_USERNAME": "a@x.org",
                  "INSTRUMENT_SMTP_PASSWORD": "right-pass-123"}).send(event())
        assert len(handler.messages) == 1


def test_smtp_server_requiring_starttls_when_it_is_turned_off(tls: TLSFiles) -> None:
    with smtp_server(tls) as server:  # answers MAIL FROM with "530 Must issue a STARTTLS"
        error = failure(from_env(smtp_env(server.port, INSTRUMENT_SMTP_STARTTLS="false")))
    assert str(error) == (f"SMTP server {HOST}:{server.port} requires STARTTLS (530); set"
                          " INSTRUMENT_SMTP_STARTTLS=true")


def test_smtp_login_not_offered_names_username_and_password_not_the_password() -> None:
    """A server that takes no login this way: the setting is named, the password is not."""
    with smtp_server(None) as server:  # offers no AUTH at all
        error = failure(from_env(smtp_env(
            server.port, INSTRUMENT_SMTP_STARTTLS="false", INSTRUMENT_SMTP_USERNAME="a@x.org",
            INSTRUMENT_SMTP_PASSWORD="hunter2-secret")))
    assert str(error) == (f"SMTP server {HOST}:{server.port} takes no login; unset"
                          " INSTRUMENT_SMTP_USERNAME and INSTRUMENT_SMTP_PASSWORD, or point"
                          " INSTRUMENT_SMTP_SERVER at one that does")


def test_smtp_every_recipient_refused_names_alert_to_emails() -> None:
    class NoSuchUser(Accepting):
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                              rcpt_options: list[str]) -> str:
            if address != "ops@x.org":
                return "550 5.1.1 No such user"
            envelope.rcpt_tos.append(address)
            return "250 OK"

    handler = NoSuchUser()
    with smtp_with(handler) as port:
        env = smtp_env(port, INSTRUMENT_SMTP_STARTTLS="false",
                       INSTRUMENT_ALERT_TO_EMAILS="typo@x.org")
        error = failure(from_env(env))
        assert error.permanent and str(error) == (
            f"SMTP server {HOST}:{port} refused every recipient [550]; check"
            " INSTRUMENT_ALERT_TO_EMAILS")
        from_env({**env, "INSTRUMENT_ALERT_TO_EMAILS": "ops@x.org"}).send(event())
        assert len(handler.messages) == 1


def test_smtp_sender_refused_names_alert_from_email() -> None:
    class OnlyOurDomain(Accepting):
        async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                              mail_options: list[str]) -> str:
            if not address.endswith("@x.org"):
                return "553 5.7.1 Sender address rejected: not owned by user"
            envelope.mail_from = address
            return "250 OK"

    handler = OnlyOurDomain()
    with smtp_with(handler) as port:
        env = smtp_env(port, INSTRUMENT_SMTP_STARTTLS="false",
                       INSTRUMENT_ALERT_FROM_EMAIL="alerts@elsewhere.org")
        error = failure(from_env(env))
        assert error.permanent and str(error) == (
            f"SMTP server {HOST}:{port} refused the sender 'alerts@elsewhere.org' (553); set"
            " INSTRUMENT_ALERT_FROM_EMAIL to an address it accepts")
        from_env({**env, "INSTRUMENT_ALERT_FROM_EMAIL": "alerts@x.org"}).send(event())
        assert len(handler.messages) == 1


def test_smtp_nothing_listening_names_server_and_port() -> None:
    port = closed_port()
    error = failure(from_env(smtp_env(port)))
    assert not error.permanent and str(error) == (
        f"SMTP server {HOST}:{port} refused the connection (ConnectionRefusedError); check"
        " INSTRUMENT_SMTP_SERVER and INSTRUMENT_SMTP_PORT")


def test_smtp_host_that_does_not_resolve_names_server_and_port() -> None:
    env = smtp_env(25, INSTRUMENT_SMTP_SERVER="smtp.no-such-host.invalid")
    assert str(failure(from_env(env))) == (
        "SMTP server smtp.no-such-host.invalid:25 is not a host name this machine can"
        " resolve; check INSTRUMENT_SMTP_SERVER and INSTRUMENT_SMTP_PORT")


def test_smtp_silent_server_names_the_timeout_setting() -> None:
    sock = listening_socket()  # accepts, never greets
    try:
        port = sock.getsockname()[1]
        channel = EmailChannel(HOST, port, to_emails=["ops@x.org"], timeout=0.3)
        error = failure(channel)
    finally:
        sock.close()
    assert not error.permanent and str(error) == (
        f"SMTP server {HOST}:{port} timed out (no answer within 0.3 s); check"
        " INSTRUMENT_SMTP_SERVER and INSTRUMENT_SMTP_PORT, or raise"
        " INSTRUMENT_ALERT_HTTP_TIMEOUT")


# -- HTTP channels ---------------------------------------------------------------------------

@pytest.mark.parametrize("status", [401, 403, 404])
def test_slack_webhook_refused_names_the_url_setting_not_its_path(
        recorder: Recorder, status: int) -> None:
    recorder.respond((status, {}, 0))
    hook = recorder.url + "/services/T0/B0/secret-token"
    error = failure(from_env({"INSTRUMENT_ALERT_SLACK": "true",
                              "INSTRUMENT_SLACK_WEBHOOK_URL": hook}))
    assert error.permanent and str(error) == (
        f"HTTP {status} from {recorder.url}/…: error; check INSTRUMENT_SLACK_WEBHOOK_URL")


def test_webhook_404_names_alert_webhook_url(recorder: Recorder) -> None:
    recorder.respond((404, {}, 0))
    error = failure(from_env({"INSTRUMENT_ALERT_WEBHOOK_URL": recorder.url + "/hook/tok-9"}))
    assert error.permanent and str(error) == (
        f"HTTP 404 from {recorder.url}/…: error; check INSTRUMENT_ALERT_WEBHOOK_URL")


def test_pagerduty_invalid_routing_key_names_the_key_never_shows_it(recorder: Recorder) -> None:
    """Events v2 answers 400 to a bad key; a body that quotes the key has it cut."""
    key = "R0UT1NGKEY-secret"
    recorder.error_body = json.dumps({"status": "invalid event",
                                      "message": "Event object is invalid",
                                      "errors": [f"Invalid routing key {key}"]}).encode()
    recorder.respond((400, {}, 0))
    error = failure(from_env({"INSTRUMENT_PAGERDUTY_ROUTING_KEY": key,
                              "INSTRUMENT_PAGERDUTY_URL": recorder.url + "/v2/enqueue"}))
    assert error.permanent and key not in str(error)
    assert "Invalid routing key ***" in str(error)
    assert str(error).endswith("; check INSTRUMENT_PAGERDUTY_ROUTING_KEY")
    assert recorder.requests[0].body["routing_key"] == key  # it was sent, just not shown


def test_pagerduty_wrong_url_names_pagerduty_url(recorder: Recorder) -> None:
    recorder.respond((404, {}, 0))
    error = failure(from_env({"INSTRUMENT_PAGERDUTY_ROUTING_KEY": "k" * 32,
                              "INSTRUMENT_PAGERDUTY_URL": recorder.url + "/v1/wrong"}))
    assert str(error) == f"HTTP 404 from {recorder.url}/…: error; check INSTRUMENT_PAGERDUTY_URL"


@pytest.mark.parametrize("status", [400, 404])
def test_alertmanager_refusing_names_its_url(recorder: Recorder, status: int) -> None:
    recorder.respond((status, {}, 0))
    error = failure(from_env({"INSTRUMENT_ALERTMANAGER_URL": recorder.url}))
    assert str(error) == (f"HTTP {status} from {recorder.url}/…: error; check"
                          " INSTRUMENT_ALERTMANAGER_URL")


def test_http_server_error_stays_retryable_without_blaming_a_setting(
        recorder: Recorder) -> None:
    recorder.respond((503, {}, 0))
    error = failure(WebhookChannel(recorder.url + "/hook", http=quick(retries=0)))
    assert not error.permanent and str(error) == f"HTTP 503 from {recorder.url}/…: error"


def test_http_nothing_listening_names_its_setting() -> None:
    port = closed_port()
    error = failure(WebhookChannel(f"http://{HOST}:{port}/hook/tok-9", http=quick(retries=0)))
    assert not error.permanent and str(error) == (
        f"ConnectionError posting to http://{HOST}:{port}/… (connection refused); check"
        " INSTRUMENT_ALERT_WEBHOOK_URL")


def test_http_host_that_does_not_resolve_names_its_setting() -> None:
    channel = SlackChannel("https://hooks.no-such-host.invalid/services/T0/B0/secret-token",
                           http=quick(retries=0))
    assert str(failure(channel)) == (
        "ConnectionError posting to https://hooks.no-such-host.invalid/… (host name does not"
        " resolve); check INSTRUMENT_SLACK_WEBHOOK_URL")


def test_http_certificate_that_does_not_verify_names_url_and_ca_bundle(
        tls: TLSFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    with http_recorder(tls) as rec:  # HTTPS signed by a CA the system does not trust
        env = {"INSTRUMENT_ALERT_WEBHOOK_URL": rec.url + "/hook/tok-9"}
        channel = from_env(env)
        channel.http.retries = 0
        error = failure(channel)
        assert str(error) == (
            f"TLS certificate of {rec.url}/… did not verify; check INSTRUMENT_ALERT_WEBHOOK_URL"
            " (the host name must match its certificate), or set REQUESTS_CA_BUNDLE to the CA"
            " that signed it")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca))
        from_env(env).send(event())
        assert len(rec.requests) == 1


def test_http_timeout_names_the_url_and_the_timeout_setting(recorder: Recorder) -> None:
    recorder.respond((200, {}, 1.0))
    channel = WebhookChannel(recorder.url + "/hook", http=quick(timeout=0.3, retries=0))
    error = failure(channel)
    assert not error.permanent and str(error) == (
        f"timeout after 0.3s posting to {recorder.url}/…; check INSTRUMENT_ALERT_WEBHOOK_URL"
        " or raise INSTRUMENT_ALERT_HTTP_TIMEOUT")


# -- SQLite stores ---------------------------------------------------------------------------

def test_metrics_db_whose_directory_is_a_file_names_instrument_metrics_db(
        tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreOpenError) as info:
        connect(str(blocker / "metrics.db"))
    assert str(info.value) == (
        f"INSTRUMENT_METRICS_DB file {blocker / 'metrics.db'} cannot be opened (a part of its"
        " directory is a file); set INSTRUMENT_METRICS_DB to a file this process can create"
        " and write")


def test_metrics_db_that_is_a_directory_names_instrument_metrics_db(tmp_path: Path) -> None:
    with pytest.raises(StoreOpenError) as info:
        connect(str(tmp_path))
    assert str(info.value).startswith(
        f"INSTRUMENT_METRICS_DB file {tmp_path} cannot be opened (it is a directory); set"
        " INSTRUMENT_METRICS_DB")


def test_metrics_db_that_is_not_sqlite_names_instrument_metrics_db(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("some other file the setting points at by mistake\n" * 100)
    with pytest.raises(StoreOpenError) as info:
        connect(str(other))
    assert "(the file is not an SQLite database); set INSTRUMENT_METRICS_DB" in str(info.value)
    assert other.read_text().startswith("some other file")  # left as it was


def as_unprivileged(fn: Callable[[], str]) -> str:
    """``fn()``, where file permissions apply: run as root, in a child that became nobody."""
    if os.geteuid() != 0:
        return fn()
    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            text = fn()
        except BaseException as exc:
            text = f"the child failed: {exc!r}"
        os.write(write, text.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        out = pipe.read()
    os.waitpid(pid, 0)
    return out


def test_metrics_db_without_write_permission_names_instrument_metrics_db() -> None:
    base = Path(tempfile.mkdtemp(prefix="instrument-perm-"))  # not under pytest's 0700 dirs
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        locked.chmod(0o555)
        existing = base / "theirs.db"
        connect(str(existing)).close()
        existing.chmod(0o444)

        def attempt(path: Path) -> Callable[[], str]:
            def run() -> str:
                try:
                    connect(str(path)).close()
                except StoreOpenError as exc:
                    return str(exc)
                return "opened"
            return run

        for path in (locked / "metrics.db", existing):
            assert as_unprivileged(attempt(path)) == (
                f"INSTRUMENT_METRICS_DB file {path} cannot be opened (permission denied); set"
                " INSTRUMENT_METRICS_DB to a file this process can create and write")
    finally:
        for p in (base / "locked", base):
            p.chmod(0o755)
        for child in base.iterdir():
            if child.is_dir():
                child.rmdir()
            else:
                child.unlink()
        base.rmdir()


def test_the_flusher_reports_the_unopenable_store_in_log_and_health(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """In an app the same words reach the log line and health, and the batch is retried."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="instrument"):
        instrument.configure(metrics_db=str(blocker / "metrics.db"), flush_interval=0.05)
        try:
            runtime.recorder.add(("call", 0.0, 0.001, "x", None))
            wait_until(lambda: runtime.stats()["backends"][0]["consecutive_failures"] >= 1,
                       what="a failed write")
            [backend] = runtime.stats()["backends"]
            _, degraded = in_process(runtime.stats(), DropWatch(), time.time())
        finally:
            instrument.shutdown(0.2)  # it never recovers: do not wait for it
    assert backend["last_error"].startswith(
        "StoreOpenError: INSTRUMENT_METRICS_DB file")
    assert backend["pending_batches"] >= 1  # kept for the retry, not dropped
    assert any("INSTRUMENT_METRICS_DB" in reason for reason in degraded), degraded
    assert "a part of its directory is a file); set INSTRUMENT_METRICS_DB" in caplog.text


def test_alerts_db_that_cannot_be_created_names_instrument_alerts_db(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StoreOpenError) as info:
        AlertManager(environ={"INSTRUMENT_ALERTS_DB": str(blocker / "alerts.db")},
                     default_rules=False)
    assert str(info.value) == (
        f"INSTRUMENT_ALERTS_DB file {blocker / 'alerts.db'} cannot be opened (a part of its"
        " directory is a file); set INSTRUMENT_ALERTS_DB to a file this process can create"
        " and write")


# -- PostgreSQL ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    """A real cluster where role ``pwuser`` must give its password (scram-sha-256)."""
    with pg_cluster() as cluster:
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute("CREATE ROLE pwuser LOGIN PASSWORD 'right-pass-123'")
        hba = cluster.data / "pg_hba.conf"
        hba.write_text("host all pwuser 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        wrong = f"postgresql://pwuser:nope@127.0.0.1:{cluster.port}/postgres"

        def refused() -> bool:
            try:
                psycopg.connect(wrong, connect_timeout=2).close()
            except psycopg.OperationalError:
                return True
            return False

        wait_until(refused, what="the server to reload pg_hba.conf")
        yield cluster


def refusal(url: str) -> str:
    with pytest.raises(StoreUnreachable) as info:
        pg_connect(url, timeout=3)
    assert isinstance(info.value, psycopg.OperationalError)  # callers' retries still apply
    return str(info.value)


def test_postgresql_wrong_password_names_instrument_storage_never_the_password(
        pg: PgCluster) -> None:
    text = refusal(f"postgresql://pwuser:wrong-pass-456@127.0.0.1:{pg.port}/postgres")
    assert text.startswith(f"PostgreSQL store INSTRUMENT_STORAGE=postgresql://pwuser:***@"
                           f"127.0.0.1:{pg.port}/postgres cannot be used: ")
    assert 'password authentication failed for user "pwuser"' in text
    assert text.endswith("; check the host, port, user, password and database in"
                         " INSTRUMENT_STORAGE")
    assert "wrong-pass-456" not in text
    pg_connect(f"postgresql://pwuser:right-pass-123@127.0.0.1:{pg.port}/postgres",
               migrate_schema=False).close()  # the advice: the right password works


def test_postgresql_missing_database_names_instrument_storage(pg: PgCluster) -> None:
    text = refusal(f"postgresql://pwuser:right-pass-123@127.0.0.1:{pg.port}/no_such_db")
    assert 'database "no_such_db" does not exist' in text
    assert "INSTRUMENT_STORAGE" in text and "right-pass-123" not in text


def test_postgresql_nothing_listening_names_instrument_storage() -> None:
    port = closed_port()
    text = refusal(f"postgresql://u:pw-secret@{HOST}:{port}/db")
    assert f"INSTRUMENT_STORAGE=postgresql://u:***@{HOST}:{port}/db" in text
    assert "Connection refused" in text and "pw-secret" not in text


def test_postgresql_refusal_reaches_the_flusher_log_and_health(
        pg: PgCluster, caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql://pwuser:wrong-pass-456@127.0.0.1:{pg.port}/postgres"
    with caplog.at_level(logging.WARNING, logger="instrument"):
        instrument.configure(storage=url, flush_interval=0.05)
        try:
            runtime.recorder.add(("call", 0.0, 0.001, "x", None))
            wait_until(lambda: runtime.stats()["backends"][0]["consecutive_failures"] >= 1,
                       what="a failed write")
            [backend] = runtime.stats()["backends"]
            _, degraded = in_process(runtime.stats(), DropWatch(), time.time())
        finally:
            instrument.shutdown(0.2)
    assert backend["last_error"].startswith("StoreUnreachable: PostgreSQL store"
                                            " INSTRUMENT_STORAGE=postgresql://pwuser:***@")
    assert any("INSTRUMENT_STORAGE" in reason for reason in degraded), degraded
    assert "password authentication failed" in caplog.text
    assert "wrong-pass-456" not in caplog.text + backend["last_error"] + " ".join(degraded)
