"""The test Django project (tests/django_site) set up in this process; its servers as subprocesses.

Importing this module puts the project on ``sys.path`` and calls ``django.setup()``
with its settings; the auth tables go to an in-memory database, migrated once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from tests.servers import HOST, in_threads, listening_socket, query, wait_until

SITE = Path(__file__).resolve().parent / "django_site"
ROOT = SITE.parent.parent
if str(SITE) not in sys.path:
    sys.path.insert(0, str(SITE))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")

import django  # noqa: E402 - after the settings module is named

django.setup()

#: Each kind of request the load tests send: (method, path pattern, stored template).
KINDS: list[tuple[str, str, str]] = [
    ("GET", "/articles/{i}/", "/articles/<int:year>/"),
    ("GET", "/shop/items/{i}/", "/shop/items/<int:item_id>/"),
    ("GET", "/shop/catalog/", "/shop/catalog/"),
    ("GET", "/shop/sku/ABC{j:02d}/", "/shop/sku/(?P<code>[A-Z]{3}\\d{2})/$"),
    ("GET", "/legacy/abc/", "/legacy/(?P<slug>[a-z]+)/$"),
    ("GET", "/blog/{stream}/3/", "/blog/{stream}/<int:n>/"),
    ("GET", "/blog/file/", "/blog/file/"),
    ("GET", "/blog/boom/", "/blog/boom/"),
    ("GET", "/blog/missing/", "/blog/missing/"),
    ("GET", "/blog/forbidden/", "/blog/forbidden/"),
    ("GET", "/blog/async/", "/blog/async/"),
    ("POST", "/blog/upload/", "/blog/upload/"),
    ("GET", "/nope/{i}", "__unmatched__"),
]

Row = tuple[str, str, int, int, int]  # endpoint, method, status, request bytes, response bytes


def migrate() -> None:
    """The auth and session tables, once per process (an in-memory database)."""
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db.utils import OperationalError

    try:
        User.objects.exists()
    except OperationalError:
        call_command("migrate", verbosity=0, interactive=False)


def load(url: str, total: int, threads: int, *, stream: str = "stream") -> Counter[Row]:
    """``total`` mixed requests from ``threads`` threads; what each answered, as rows to expect."""
    answered: Counter[Row] = Counter()
    lock = threading.Lock()
    per = total // threads

    def client(c: int) -> None:
        with requests.Session() as s:
            for k in range(per):
                i = c * per + k
                method, pattern, template = KINDS[i % len(KINDS)]
                target = pattern.format(i=i, j=i % 100, stream=stream)
                body = b"u" * (i % 50) if method == "POST" else None
                r = s.request(method, url + target, data=body, timeout=30)
                row = (template.replace("{stream}", stream), method, r.status_code,
                       len(body or b""), len(r.content))
                with lock:
                    answered[row] += 1

    in_threads(client, threads, timeout=300)
    assert sum(answered.values()) == per * threads
    return answered


def stored(db: Path) -> Counter[Row]:
    rows = query(db, "SELECT endpoint, method, status_code, request_size_bytes,"
                     " response_size_bytes FROM api_metrics")
    return Counter(tuple(r) for r in rows)  # type: ignore[misc]


@contextlib.contextmanager
def server(kind: str, env: Mapping[str, str], *, workers: int = 2, preload: bool = True,
           app_dir: Path = SITE, target: str | None = None) -> Iterator[tuple[str, Any]]:
    """gunicorn (sync workers) or uvicorn serving the project on an inherited socket."""
    sock = listening_socket()
    fd = sock.fileno()
    if kind == "gunicorn":
        cmd = [sys.executable, "-m", "gunicorn", "--worker-class", "sync", "--workers",
               str(workers), "--bind", f"fd://{fd}", "--chdir", str(app_dir),
               "--graceful-timeout", "20", "--log-level", "warning",
               *(["--preload"] if preload else []), target or "djsite.wsgi:application"]
    else:
        cmd = [sys.executable, "-m", "uvicorn", "--fd", str(fd), "--workers", str(workers),
               "--app-dir", str(app_dir), "--log-level", "warning", "--no-access-log",
               "--timeout-graceful-shutdown", "20", target or "djsite.asgi:application"]
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full.pop("DJANGO_SETTINGS_MODULE", None)
    log = open(Path(env["INSTRUMENT_METRICS_DB"]).parent / f"{kind}.log", "w+b")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=full, pass_fds=[fd], stdout=log, stderr=subprocess.STDOUT,
                            cwd=str(app_dir))
    proc.log_path = log.name  # type: ignore[attr-defined]  # wait_ready shows it on failure
    url = f"http://{HOST}:{sock.getsockname()[1]}"
    sock.close()  # the server holds its own copy
    try:
        yield url, proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # graceful: every worker flushes before it exits
        code = proc.wait(60)
        log.seek(0)
        # a single uvicorn process re-raises the SIGTERM it handled once it has shut down
        ok = (0, -signal.SIGTERM) if kind == "uvicorn" and workers == 1 else (0,)
        assert code in ok, log.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def health_ok(url: str) -> bool:
    try:
        return requests.get(url + "/monitoring/api/v1/monitoring/health", timeout=2).ok
    except requests.RequestException:
        return False


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    """Until the status-only health check answers (it is never recorded)."""
    log = Path(getattr(proc, "log_path", "/dev/null"))
    try:
        wait_until(lambda: health_ok(url) or proc.poll() is not None, timeout=60,
                   what="the Django server")
    except TimeoutError:
        raise AssertionError("not ready in 60 s:\n" + log.read_text(errors="replace")) from None
    assert proc.poll() is None, log.read_text(errors="replace")
