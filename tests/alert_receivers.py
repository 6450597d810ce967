"""Real receivers for the alert channel tests: an HTTP recorder and an SMTP server with TLS.

Both listen on sockets bound to port 0 on 127.0.0.1 before they start. The HTTP
recorder answers from a script (status, headers, delay) so tests can play a
Slack that rate-limits, a webhook that fails with 500 or hangs past the
client's timeout. The SMTP server is aiosmtpd with STARTTLS on a certificate
issued by a throw-away CA made with ``cryptography``.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.servers import HOST, listening_socket, wait_until

__all__ = ["Recorder", "SMTPServer", "TLSFiles", "http_recorder", "make_tls", "smtp_server"]


@dataclass
class Request:
    at: float
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Recorder:
    """What the HTTP recorder received, and what it will answer next."""

    url: str
    requests: list[Request] = field(default_factory=list)
    script: deque[tuple[int, dict[str, str], float]] = field(default_factory=deque)
    #: The body of every answer that is not a 2xx (PagerDuty's JSON error, say).
    error_body: bytes = b"error"

    def respond(self, *answers: tuple[int, dict[str, str], float]) -> None:
        """Queue answers (status, headers, delay seconds); afterwards 200 is answered."""
        self.script.extend(answers)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Request]:
        wait_until(lambda: len(self.requests) >= count, timeout, what=f"{count} requests")
        return self.requests


@contextmanager
def http_recorder(tls: TLSFiles | None = None) -> Iterator[Recorder]:
    """A threaded HTTP server on a free port that records every POSTed JSON body.

    With ``tls`` it speaks HTTPS with that certificate (a client that does not trust
    the test CA fails its handshake, which the server shrugs off).
    """
    sock = listening_socket()
    if tls is not None:
        sock = tls.server_context().wrap_socket(sock, server_side=True)
    scheme = "https" if tls is not None else "http"
    rec = Recorder(url=f"{scheme}://{HOST}:{sock.getsockname()[1]}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            status, headers, delay = rec.script.popleft() if rec.script else (200, {}, 0.0)
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            rec.requests.append(Request(time.monotonic(), self.path, dict(self.headers), body))
            if delay:
                time.sleep(delay)
            try:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                payload = b'{"status": "ok"}' if status < 300 else rec.error_body
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the client gave up (timeout tests)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((HOST, 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_address = sock.getsockname()
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class TLSFiles:
    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only the test CA."""
        return ssl.create_default_context(cafile=str(self.ca))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


def make_tls(directory: Path) -> TLSFiles:
    """A CA and a server certificate for 127.0.0.1/localhost, valid for a day."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "instrument test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


@dataclass
class SMTPServer:
    host: str
    port: int
    messages: list[Envelope] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)


class _Controller(Controller):
    """aiosmtpd's controller on an already-bound socket (no port guessing)."""

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any) -> None:
        self._sock = sock
        super().__init__(handler, hostname=HOST, port=sock.getsockname()[1], **kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)


@contextmanager
def smtp_server(tls: TLSFiles | None, *, password: str | None = None) -> Iterator[SMTPServer]:
    """A real SMTP server; with ``tls`` it offers STARTTLS and requires it for AUTH."""
    sock = listening_socket()
    state = SMTPServer(HOST, sock.getsockname()[1])

    class Handler:
        async def handle_DATA(self, server: Any, session: Any,
                              envelope: Envelope) -> str:
            state.messages.append(envelope)
            return "250 Message accepted for delivery"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password.decode() == password
        if ok:
            state.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)

    kwargs: dict[str, Any] = {}
    if tls is not None:
        kwargs |= {"tls_context": tls.server_context(), "require_starttls": True}
    if password is not None:
        kwargs |= {"authenticator": authenticator, "auth_require_tls": tls is not None}
    controller = _Controller(Handler(), sock, **kwargs)
    controller.start()
    try:
        yield state
    finally:
        controller.stop()
