"""The demo's final summary: per-route tables, counts checked, alerts, logs, data, overhead."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from instrument.core.batch import iso_utc
from instrument.core.runtime import runtime
from instrument.demo.report import (
    call_table,
    flask_templates,
    log_sample,
    print_calls,
    print_routes,
    route_tables,
)

__all__ = ["Summary"]

_TITLES = {"flask": ("Flask app", "examples/flask_app.py"),
           "fastapi": ("FastAPI app", "examples/fastapi_app.py")}


def _check(recorded: int, expected: int) -> str:
    return "match" if recorded == expected else "MISMATCH"


class Summary:
    """Reads the store for this run (this process, since it started) and prints the summary."""

    def __init__(self, demo: Any, outcome: Any, apps: dict[str, tuple[Any, ModuleType]],
                 jobs_module: ModuleType) -> None:
        self.demo = demo
        self.say = demo.say
        self.outcome = outcome
        self.apps = apps
        self.jobs_module = jobs_module
        self.since = iso_utc(demo.run_wall - 1.0)
        self.pid = os.getpid()

    def print(self) -> None:
        o, say = self.outcome, self.say
        say("")
        say("=" * 100)
        state = "interrupted after" if o.interrupted and o.traffic is not None else "after"
        say(f"Summary, {state} {o.elapsed:.1f}s")
        t = o.traffic
        if t is not None:
            say(f"  the demo sent {t.sent} requests ({t.sent / max(o.elapsed, 1e-9):.0f}/s) from"
                f" {t.concurrency} client threads; {t.failed} got no answer;"
                f" {t.upstream_calls} of them made the Flask app call the FastAPI app")
            for what, n in t.failures.most_common(5):
                say(f"  no answer: {what} x{n}")
        tables = self._routes()
        self._calls()
        self._alerts()
        self._logs()
        self._data()
        if self.demo.stopper.hurry:
            say("\nOverhead benchmark skipped (Ctrl-C pressed twice).")
        else:
            self._overhead(tables)

    # -- requests -------------------------------------------------------------------------
    def _routes(self) -> dict[str, list[dict[str, Any]]]:
        flask = ("flask", flask_templates(self.apps["flask"][0].app))
        tables = route_tables(self.demo.db, self.since, self.pid, flask, "fastapi")
        t = self.outcome.traffic
        for name, table in tables.items():
            title, source = _TITLES[name]
            served = self.apps[name][0]
            self.say(f"\n{title}  {served.url}  ({source})")
            print_routes(self.say, table)
            recorded = sum(r["count"] for r in table)
            if t is None:
                self.say(f"  {title}: recorded {recorded} requests")
            elif name == "fastapi":
                expected = t.answered[name] + t.upstream_calls
                self.say(f"  {title}: recorded {recorded} of {expected} requests"
                         f" ({t.answered[name]} sent by the demo + {t.upstream_calls} calls"
                         f" from the Flask app) ({_check(recorded, expected)})")
            else:
                self.say(f"  {title}: recorded {recorded} of {t.answered[name]} requests sent"
                         f" ({_check(recorded, t.answered[name])})")
        return tables

    def _calls(self) -> None:
        table = call_table(self.demo.db, self.since, self.pid)
        self.say("\nBackground jobs (examples/batch_jobs.py, @instrument.timed) and outgoing"
                 " calls (instrument.requests)")
        print_calls(self.say, table)
        o = self.outcome
        if o.jobs is not None and o.traffic is not None:
            jobs = sum(r["count"] for r in table if r["kind"] == "call")
            out = sum(r["count"] for r in table if r["kind"] == "client")
            self.say(f"  jobs: recorded {jobs} of {o.jobs.calls} calls"
                     f" ({_check(jobs, o.jobs.calls)}); outgoing: recorded {out} of"
                     f" {o.traffic.upstream_calls} calls ({_check(out, o.traffic.upstream_calls)})")

    # -- alerts -----------------------------------------------------------------------------
    def _alerts(self) -> None:
        from instrument.demo.alerts import RULE

        events = self.outcome.watcher.events if self.outcome.watcher else []
        self.say("\nAlerts")
        rules = sorted({e[1] for e in events} | {RULE}, key=lambda r: (r != RULE, r))
        for rule in rules:
            mine = [e for e in events if e[1] == rule]
            fired = next((e[0] for e in mine if e[2] == "firing"), None)
            resolved = next((e[0] for e in mine if e[2] == "resolved" and fired is not None
                             and e[0] >= fired), None)
            sent = [e[3] for e in mine if e[2] == "notification_sent"]
            failed = [e[3] for e in mine if e[2] == "notification_failed"]
            if fired is not None:
                end = f"resolved at {resolved:.1f}s" if resolved is not None else \
                    "still firing when the demo stopped"
                line = f"  {rule}: fired at {fired:.1f}s, {end}"
            elif rule == RULE:
                steps = ", ".join(f"{e[2]} at {e[0]:.1f}s" for e in mine)
                line = f"  {rule}: did not fire" + (f" ({steps})" if steps else "")
            else:
                times = sum(1 for e in mine if e[2] == "pending")
                line = (f"  {rule}: did not fire (pending {times} time{'s' * (times != 1)};"
                        " default rules need the condition for minutes)")
            if sent:
                line += "; notified: " + ", ".join(sent)
            if failed:
                line += "; FAILED: " + "; ".join(failed)
            self.say(line)
        self.say(f"  history: sqlite3 {self.demo.alerts_db} 'SELECT timestamp, rule, event,"
                 " detail FROM alert_history ORDER BY id DESC LIMIT 10'")

    # -- logs and data ------------------------------------------------------------------------
    def _logs(self) -> None:
        rid, lines = log_sample(self.demo.db, self.demo.log_file, self.pid)
        if rid is None:
            return
        self.say(f"\nOne request across both apps: X-Request-ID {rid} (the Flask handler's call"
                 " carried it to FastAPI)")
        for line in lines[:6]:
            self.say("  " + (line if len(line) <= 220 else line[:217] + "..."))

    def _data(self) -> None:
        d = self.demo
        self.say("\nWhere the data lives")
        self.say(f"  metrics  {d.db}")
        self.say("           api_metrics (one row per request), call_metrics, metric_rollups,"
                 " system_metrics, logs (searchable)")
        self.say(f"  alerts   {d.alerts_db}   (alerts, alert_history, alert_notifications)")
        self.say(f"  logs     {d.log_file}   (JSON lines, with request ids)")
        self.say(f"  browse   INSTRUMENT_DASHBOARD_TOKEN=<secret> instrument dashboard --db {d.db}"
                 f" --alerts-db {d.alerts_db}")

    # -- overhead -------------------------------------------------------------------------------
    def _overhead(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        from instrument.demo.overhead import CALLS, ROUNDS, flusher_cpu_seconds, measure

        say = self.say
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        say("\nThe kit's own overhead, measured on this machine at the end of this run")
        say("  in-process micro-benchmark: each example app called directly (no network), bare vs"
            " instrumented as deployed,")
        say(f"  {ROUNDS} alternating rounds x {CALLS} calls each; CPU time of the calling thread;"
            " median of the per-round differences;")
        say("  the benchmark's own samples go to a private buffer and are not stored."
            f" Load average {load:.1f} on {os.cpu_count()} CPUs: a busy machine widens the IQR.")
        results = measure(self.apps["flask"][1], self.apps["fastapi"][1])
        for r in results:
            name = "flask" if r.app == "Flask" else "fastapi"
            handled = sum(x["count"] for x in tables.get(name, []))
            say(f"  {r.app:<8} {r.target:<17} bare {r.bare_us:7.1f} us   instrumented"
                f" {r.instrumented_us:7.1f} us   overhead {r.overhead_us:5.1f} us/request"
                f" (IQR {r.q1_us:.1f} to {r.q3_us:.1f});"
                f" x {handled} requests = {r.overhead_us * handled / 1000:.0f} ms CPU this run")
        stats = runtime.stats()
        samples = stats.get("samples_flushed") or 0
        cpu = flusher_cpu_seconds()
        if samples and cpu > 0:
            say(f"  flusher (background thread): {cpu * 1e6 / samples:.1f} us CPU per stored"
                f" sample, {cpu * 1000:.0f} ms for {samples} samples (requests, calls, log"
                f" records, system readings); dropped {stats.get('dropped', 0)}")
