"""``instrument demo``: both example apps under realistic traffic, an incident, then the numbers.

This module only orchestrates: :mod:`._demo_servers` serves the examples,
:mod:`._demo_traffic` drives them, :mod:`._demo_alerts` runs the alert manager
with a rule tuned for seconds, :mod:`._demo_console` draws progress,
:mod:`._demo_summary` prints what the store holds and :mod:`._demo_overhead`
measures the kit's own cost. Ctrl-C (SIGINT) or SIGTERM at any point stops the
traffic and still prints the summary; a second Ctrl-C skips the benchmark.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from instrument.config import ConfigError, Settings
from instrument.core.batch import iso_utc
from instrument.core.runtime import runtime
from instrument.demo.console import Console, Progress

__all__ = ["DemoOptions", "run_demo"]

NEEDS = {"flask": "flask", "fastapi": "fastapi", "uvicorn": "uvicorn"}


@dataclass
class DemoOptions:
    """What ``instrument demo`` was asked for (see ``instrument demo --help``)."""

    duration: float = 20.0
    requests: int | None = None
    concurrency: int = 8
    db: str | None = None
    no_traffic: bool = False


class _Stopper:
    """SIGINT/SIGTERM handler: the first asks the demo to wrap up, the second to hurry."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.presses = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.presses += 1
        self.event.set()

    @property
    def hurry(self) -> bool:
        return self.presses >= 2

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


def _paths(db: str | None) -> tuple[str, str, str]:
    """(metrics db, alerts db, JSON log file): the alerts file and the log sit by the metrics."""
    metrics = os.path.abspath(db or Settings.from_env().metrics_db)
    folder = os.path.dirname(metrics)
    alerts = os.environ.get("INSTRUMENT_ALERTS_DB") or os.environ.get("ALERTS_DB_PATH")
    return metrics, os.path.abspath(alerts or os.path.join(folder, "alerts.db")), \
        os.path.join(folder, "demo-logs.jsonl")


def run_demo(options: DemoOptions | None = None) -> int:
    """Run the demo; returns the exit status (0 after a summary, also after Ctrl-C)."""
    opts = options or DemoOptions()
    console = Console()
    missing = [pkg for mod, pkg in NEEDS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        console.say(f"instrument demo needs {', '.join(missing)}: pip install"
                    ' "instrument-kit[flask,fastapi]" uvicorn')
        return 1
    stopper = _Stopper()
    with stopper.installed():
        try:
            return _Demo(opts, console, stopper).run()
        except ConfigError as exc:
            console.say(f"instrument demo: {exc}")
            return 2


class _Demo:
    def __init__(self, opts: DemoOptions, console: Console, stopper: _Stopper) -> None:
        self.opts = opts
        self.console = console
        self.say = console.say
        self.stopper = stopper
        self.db, self.alerts_db, self.log_file = _paths(opts.db)
        self.token = secrets.token_urlsafe(24)
        self.prometheus = importlib.util.find_spec("prometheus_client") is not None

    def run(self) -> int:
        from instrument.alerting import reset_alert_manager
        from instrument.demo.alerts import Signals, start_alerts
        from instrument.demo.servers import load_example, serve_asgi, serve_wsgi
        from instrument.logs import setup_logging
        from instrument.storage.sqlite import connect
        from instrument.system.current import get_metrics_collector, reset_metrics_collector

        os.environ["INSTRUMENT_ALERTS_DB"] = self.alerts_db  # the dashboard reads alerts here
        runtime.configure(metrics_db=self.db, storage=None, backends=None, enabled=True,
                          dashboard_token=self.token, prometheus=self.prometheus,
                          flush_interval=0.5, collection_interval=2.0, raw_rows=True,
                          request_id=True)
        connect(self.db).close()  # tables exist before anything reads them
        log_stream = open(self.log_file, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        root = setup_logging("INFO", json=True, stream=log_stream, store=True)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access lines
        self.run_wall = time.time()
        servers = []
        try:
            users_mod = load_example("fastapi_app.py")
            shop_mod = load_example("flask_app.py")
            jobs_mod = load_example("batch_jobs.py")
            api = serve_asgi("fastapi", users_mod.app)
            servers.append(api)
            shop = serve_wsgi("flask", shop_mod.create_app(users_url=api.url))
            servers.insert(0, shop)
            collector = get_metrics_collector()
            collector.start_collection()
            signals = Signals(self.db, os.getpid(), collector)
            manager = start_alerts(self.alerts_db, signals)
            self._banner(shop.url, api.url, manager)
            outcome = self._drive(shop.url, api.url, jobs_mod, manager, signals)
            for served in servers:
                served.stop()
            servers = []
            expected = outcome.expected()
            self._settle(expected)
            outcome.watcher.stop()
            reset_alert_manager()
            reset_metrics_collector()
            signals.close()
            from instrument.demo.summary import Summary

            Summary(self, outcome, {"flask": (shop, shop_mod), "fastapi": (api, users_mod)},
                    jobs_mod).print()
        finally:
            for served in servers:
                served.stop()
            runtime.shutdown()
            for handler in list(root.handlers):
                if getattr(handler, "_instrument_owned", False):
                    root.removeHandler(handler)
            log_stream.close()
        return 0

    def _banner(self, shop: str, api: str, manager: Any) -> None:
        from instrument.demo.alerts import CHECK_INTERVAL, FOR_SECONDS, THRESHOLD, WINDOW

        say = self.say
        say("instrument demo: two example apps, instrumented, on loopback")
        say(f"  Flask app     {shop}   (examples/flask_app.py)")
        say(f"  FastAPI app   {api}   (examples/fastapi_app.py)")
        say(f"  dashboard     {shop}/monitoring/login?token={self.token}")
        say(f"                (the link signs you in; {api}/monitoring works too, same token:"
            " INSTRUMENT_DASHBOARD_TOKEN)")
        if self.prometheus:
            say(f"  Prometheus    {shop}/metrics   and {api}/metrics   (no token: scrapers"
                " do not sign in)")
        else:
            say('  Prometheus    off: pip install "instrument-kit[prometheus]" to serve /metrics')
        folder = os.path.dirname(self.db)
        say(f"  data          {self.db}")
        say(f"                {self.alerts_db}, {os.path.relpath(self.log_file, folder)}"
            " (JSON log lines with request ids)")
        say(f"  alerting      demo rule: error rate > {THRESHOLD:g}% for {FOR_SECONDS:g}s over"
            f" the last {WINDOW:g}s of requests, checked every {CHECK_INTERVAL:g}s")
        say("                (tuned for a short demo: the default rules use 5-minute windows"
            " and minutes of duration; system_down is off)")
        say(f"                channels: {', '.join(manager.dispatcher.channels)}"
            " (email, Slack, webhook, PagerDuty when the environment configures them)")

    def _drive(self, shop: str, api: str, jobs_mod: Any, manager: Any, signals: Any) -> Any:
        from instrument.demo.alerts import RULE, Watcher
        from instrument.demo.traffic import Jobs, Traffic

        opts, stop = self.opts, self.stopper.event
        outcome = _Outcome(manager=manager)
        started = time.monotonic()
        outcome.started_wall = time.time()
        outcome.watcher = Watcher(manager, self.say, outcome.started_wall, signals)
        outcome.watcher.start()
        if opts.no_traffic:
            self.say("\nServing until Ctrl-C. Try:  curl -i " + shop + "/items/1   or  curl -i "
                     + api + "/api/users/7")
            while not stop.wait(0.5):
                pass
            outcome.elapsed = time.monotonic() - started
            outcome.interrupted = True
            return outcome
        duration = opts.duration
        begin = started + 0.3 * duration
        incident = (begin, begin + max(5.0, 0.3 * duration))
        if incident[1] + 4.0 > started + duration:
            self.say(f"  note: {duration:g}s is short; the alert may not fire and resolve"
                     " (20s or more shows the whole cycle)")
        traffic = Traffic({"flask": shop, "fastapi": api}, concurrency=opts.concurrency,
                          deadline=started + duration, total=opts.requests, incident=incident)
        jobs = Jobs(jobs_mod)
        outcome.traffic, outcome.jobs = traffic, jobs

        def alert_state() -> str:
            if RULE in manager.active_alerts:
                return "FIRING"
            return "pending" if RULE in manager.pending_alerts else "ok"

        progress = Progress(self.console, traffic, started, duration, alert_state)
        self.say(f"\nTraffic: {duration:g}s from {opts.concurrency} client threads, incident"
                 f" from {incident[0] - started:.0f}s to {incident[1] - started:.0f}s;"
                 " Ctrl-C ends early with the summary.")
        jobs.start()
        traffic.start()
        progress.start()
        while traffic.alive() and not stop.wait(0.1):
            pass
        traffic.stop()
        traffic.join(20.0)
        outcome.elapsed = time.monotonic() - started
        outcome.interrupted = stop.is_set()
        jobs.stop()
        if not stop.is_set() and RULE in manager.active_alerts:
            self.say("  waiting for the alert to resolve (no more errors are coming)...")
            deadline = time.monotonic() + 10.0
            while RULE in manager.active_alerts and time.monotonic() < deadline \
                    and not stop.wait(0.1):
                pass
        progress.stop()
        return outcome

    def _settle(self, expected: int | None) -> None:
        """Flush until the store holds every answered request (servers record on close)."""
        from instrument.demo.report import count_requests

        since = iso_utc(self.run_wall - 1.0)
        deadline = time.monotonic() + 10.0
        while True:
            runtime.flush(5.0)
            if expected is None or count_requests(self.db, since, os.getpid()) >= expected \
                    or time.monotonic() > deadline:
                return
            time.sleep(0.05)


@dataclass
class _Outcome:
    """What happened during the traffic phase, for the summary."""

    manager: Any = None
    watcher: Any = None
    traffic: Any = None
    jobs: Any = None
    started_wall: float = 0.0
    elapsed: float = 0.0
    interrupted: bool = False

    def expected(self) -> int | None:
        """Requests the store must hold: every answer, plus the calls Flask made to FastAPI."""
        if self.traffic is None:
            return None
        return int(self.traffic.sent + self.traffic.upstream_calls)

