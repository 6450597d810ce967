"""``instrument demo`` as a user runs it: a subprocess whose output and files are checked.

The 20-second run is checked end to end: the printed dashboard link signs a
browser session in, ``/metrics`` answers, the demo's alert goes pending, fires
and resolves while traffic runs (and reaches a real SMTP server and a Slack-like
webhook configured through the environment), the summary's counts equal what
was sent, and the SQLite file holds exactly that many requests. Ctrl-C (SIGINT)
mid-traffic and ``--no-traffic`` both end with a summary and exit status 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.alert_receivers import http_recorder, make_tls, smtp_server
from tests.servers import query, wait_until


def demo_command() -> list[str]:
    """The installed ``instrument`` script (what ``make demo`` runs), else the module."""
    script = Path(sys.executable).with_name("instrument")
    return [str(script)] if script.exists() else [sys.executable, "-m", "instrument.cli"]


class DemoRun:
    """A running demo: its process and its output so far, read on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """The first match of ``pattern`` in the output, waiting for it to be printed."""
        regex = re.compile(pattern, re.M)

        def found() -> re.Match[str] | None:
            match = regex.search(self.text())
            if match is None and self.proc.poll() is not None:
                raise AssertionError(f"demo exited before printing {pattern!r}:\n{self.text()}")
            return match

        return wait_until(found, timeout=timeout, interval=0.05, what=pattern)

    def finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10.0)
        return code


@contextmanager
def demo(args: list[str], tmp_path: Path, **env_extra: str) -> Iterator[DemoRun]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("INSTRUMENT_") and k not in ("METRICS_DB_PATH", "ALERTS_DB_PATH")}
    env |= {"INSTRUMENT_METRICS_DB": str(tmp_path / "data" / "metrics.db"),
            "PYTHONUNBUFFERED": "1", **env_extra}
    proc = subprocess.Popen([*demo_command(), "demo", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = DemoRun(proc)
    try:
        yield run
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10.0)
        run._reader.join(10.0)
        assert proc.stdout is not None
        proc.stdout.close()


def counts(out: str) -> dict[str, tuple[int, int]]:
    """``{app: (recorded, expected)}`` from the summary's check lines."""
    found = re.findall(r"^  (Flask|FastAPI) app: recorded (\d+) of (\d+) requests", out, re.M)
    return {app: (int(rec), int(exp)) for app, rec, exp in found}


def test_demo_fires_and_resolves_an_alert_and_stores_every_request(tmp_path: Path) -> None:
    """A 20 s run: dashboard link works, alert cycles live and by email/Slack, counts are exact."""
    tls = make_tls(tmp_path)
    with http_recorder() as slack, smtp_server(tls) as smtp, demo(
            ["--duration", "20"], tmp_path, ENABLE_SLACK_ALERTS="true",
            SLACK_WEBHOOK_URL=slack.url + "/services/T0/B0/demo", ENABLE_EMAIL_ALERTS="true",
            SMTP_SERVER=smtp.host, SMTP_PORT=str(smtp.port), ALERT_TO_EMAILS="ops@example.org",
            ALERT_FROM_EMAIL="demo@example.org", INSTRUMENT_SMTP_CA_FILE=str(tls.ca)) as run:
        link = run.wait_for(r"dashboard\s+(http://\S+/monitoring/login\?token=\S+)").group(1)
        base = link.split("/monitoring")[0]
        browser = requests.Session()
        page = browser.get(link, timeout=10)  # follows the redirect with the session cookie
        assert page.status_code == 200 and page.url == base + "/monitoring"
        assert 'name="token"' not in page.text and "instrument_session" in browser.cookies
        assert requests.get(base + "/api/v1/monitoring/routes", timeout=10).status_code == 401
        wrong = requests.get(base + "/monitoring/login?token=wrong", timeout=10)
        assert wrong.status_code == 401 and 'name="token"' in wrong.text  # the form again
        scrape = requests.get(base + "/metrics", timeout=10)
        assert scrape.status_code == 200 and "instrument_kit_samples_total" in scrape.text
        run.wait_for(r"demo_error_rate: FIRING", timeout=60.0)
        alerts = browser.get(base + "/api/v1/monitoring/alerts", timeout=10)
        assert alerts.status_code == 200 and "demo_error_rate" in alerts.text
        assert run.finish(120.0) == 0, run.text()
        mails = wait_until(lambda: len(smtp.messages) >= 2 and smtp.messages, timeout=10.0,
                           what="firing and resolved mails")
        posts = slack.wait_for(2)
    out = run.text()
    summary = out.index("Summary, after")
    live = [out.index(f"demo_error_rate: {s}") for s in ("PENDING", "FIRING", "RESOLVED")]
    assert live == sorted(live) and live[-1] < summary, out  # shown as they happened
    line = re.search(r"^  demo_error_rate: fired at ([\d.]+)s, resolved at ([\d.]+)s(.*)$",
                     out, re.M)
    assert line is not None, out
    assert 0 < float(line.group(1)) < float(line.group(2))
    for channel in ("log", "email", "slack"):  # every configured channel was told both
        assert f"{channel} firing" in line.group(3) and f"{channel} resolved" in line.group(3)
    got = counts(out)
    assert set(got) == {"Flask", "FastAPI"} and all(r == e > 200 for r, e in got.values()), out
    stored = query(tmp_path / "data" / "metrics.db", "SELECT COUNT(*) FROM api_metrics")[0][0]
    assert stored == sum(e for _r, e in got.values())  # the file holds exactly what was sent
    jobs = re.search(r"jobs: recorded (\d+) of (\d+) calls \(match\); outgoing: recorded (\d+) of"
                     r" (\d+) calls \(match\)", out)
    assert jobs is not None and int(jobs.group(1)) > 10 and int(jobs.group(3)) > 10, out
    assert re.search(r"Flask +GET /items/42 .* overhead +-?[\d.]+ us/request", out), out
    assert re.search(r"One request across both apps: X-Request-ID (\S+)", out), out
    subjects = [m.content.decode(errors="replace") for m in mails]  # type: ignore[union-attr]
    assert any("[FIRING] demo_error_rate" in s for s in subjects)
    assert any("[RESOLVED] demo_error_rate" in s for s in subjects)
    assert "FIRING" in str(posts[0].body) and "RESOLVED" in str(posts[-1].body)
    log = (tmp_path / "data" / "demo-logs.jsonl").read_text()
    assert '"logger": "instrument.alerts"' in log and '"request_id": ' in log


def test_demo_ends_cleanly_on_ctrl_c_with_a_summary(tmp_path: Path) -> None:
    """SIGINT mid-traffic stops the run early; the summary still counts every request, exit 0."""
    with demo(["--duration", "60"], tmp_path) as run:
        run.wait_for(r"^Traffic: ")
        db = tmp_path / "data" / "metrics.db"
        wait_until(lambda: query(db, "SELECT COUNT(*) FROM api_metrics")[0][0] > 100,
                   timeout=30.0, what="some traffic stored")
        started = time.monotonic()
        run.proc.send_signal(signal.SIGINT)
        assert run.finish(60.0) == 0, run.text()
        assert time.monotonic() - started < 40.0  # it did not run on to the full minute
    out = run.text()
    assert "Summary, interrupted after" in out, out
    got = counts(out)
    assert set(got) == {"Flask", "FastAPI"} and all(r == e > 0 for r, e in got.values()), out
    assert "Traceback" not in out


def test_demo_without_traffic_serves_the_apps_until_ctrl_c(tmp_path: Path) -> None:
    """--no-traffic serves both apps; requests by hand are summarised and logged with one id."""
    with demo(["--no-traffic"], tmp_path) as run:
        shop = run.wait_for(r"Flask app\s+(http://\S+)").group(1)
        users = run.wait_for(r"FastAPI app\s+(http://\S+)").group(1)
        run.wait_for(r"Serving until Ctrl-C")
        assert requests.get(users + "/api/users/7", timeout=10).json()["name"] == "user-7"
        owner = requests.get(shop + "/items/55/owner", timeout=10)  # Flask calls FastAPI
        assert owner.status_code == 404 and owner.json() == {"item": 55, "owner": None}
        rid = owner.headers["X-Request-ID"]
        db = tmp_path / "data" / "metrics.db"
        wait_until(lambda: query(db, "SELECT COUNT(*) FROM api_metrics")[0][0] == 3,
                   timeout=30.0, what="three stored requests")
        run.proc.send_signal(signal.SIGINT)
        assert run.finish(60.0) == 0, run.text()
    out = run.text()
    assert "Flask app: recorded 1 requests" in out and "FastAPI app: recorded 2 requests" in out
    assert re.search(r"client +GET 127\.0\.0\.1:\d+/api/users/\{user_id\} +1 ", out), out
    lines = [json.loads(line) for line in
             (tmp_path / "data" / "demo-logs.jsonl").read_text().splitlines()]
    mine = {(r["logger"], r["route"], r["message"]) for r in lines if r.get("request_id") == rid}
    assert mine == {("shop", "/items/<int:item_id>/owner", "owner looked up"),
                    ("users", "/api/users/{user_id}", "no such user")}  # one id, both apps
