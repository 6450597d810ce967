"""The demo's summary, computed from what the kit stored during this run.

Per-route figures come from this process's ``api_metrics`` rows since the run
started (exact percentiles, not the rollups' histograms), split by app through
the Flask app's route templates (the rest is FastAPI's); calls of decorated functions and outgoing
``requests`` calls come from ``call_metrics``. Nothing here trusts the demo's
own counters except to compare them with the store.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from instrument.core.batch import UNMATCHED

__all__ = ["call_table", "count_requests", "flask_templates", "log_sample", "print_calls",
           "print_routes", "route_tables"]

Say = Callable[[str], None]


def flask_templates(app: Any) -> set[str]:
    """The route templates a Flask app's requests are recorded under (its url_map rules)."""
    return {rule.rule for rule in app.url_map.iter_rules()}


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]


def _rows(db: str, sql: str, args: Iterable[Any]) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=10.0)
    try:
        return conn.execute(sql, tuple(args)).fetchall()
    finally:
        conn.close()


def count_requests(db: str, since_iso: str, pid: int) -> int:
    """Requests this process stored since ``since_iso``."""
    return int(_rows(db, "SELECT COUNT(*) FROM api_metrics WHERE timestamp >= ? AND pid = ?",
                     (since_iso, pid))[0][0])


def route_tables(db: str, since_iso: str, pid: int, first: tuple[str, set[str]],
                 rest: str) -> dict[str, list[dict[str, Any]]]:
    """``{app: [route figures...]}`` for this run.

    ``first`` is an app whose templates are all known (Flask's ``url_map``); its
    routes and the unmatched ones go to it, every other route to ``rest``.
    """
    rows = _rows(db, "SELECT endpoint, method, status_code, response_time_ms, request_size_bytes,"
                     " response_size_bytes, error_count FROM api_metrics"
                     " WHERE timestamp >= ? AND pid = ?", (since_iso, pid))
    groups: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for row in rows:
        groups.setdefault((row[0], row[1]), []).append(row)
    name, templates = first
    tables: dict[str, list[dict[str, Any]]] = {name: [], rest: []}
    for (endpoint, method), items in groups.items():
        owner = name if endpoint in templates or endpoint == UNMATCHED else rest
        times = sorted(r[3] for r in items)
        tables[owner].append({
            "route": endpoint, "method": method, "count": len(items),
            "errors": sum(r[6] for r in items),
            "client_errors": sum(1 for r in items if 400 <= r[2] < 500),
            "p50": _pct(times, 50), "p95": _pct(times, 95), "p99": _pct(times, 99),
            "bytes_in": sum(r[4] or 0 for r in items), "bytes_out": sum(r[5] or 0 for r in items),
        })
    for table in tables.values():
        table.sort(key=lambda r: (-r["count"], r["route"], r["method"]))
    return tables


def call_table(db: str, since_iso: str, pid: int) -> list[dict[str, Any]]:
    """Decorated functions (kind ``call``) and outgoing calls (kind ``client``) of this run."""
    rows = _rows(db, "SELECT kind, name, method, status_code, duration_ms, exception"
                     " FROM call_metrics WHERE timestamp >= ? AND pid = ?", (since_iso, pid))
    groups: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for row in rows:
        label = row[1] if row[0] == "call" else f"{row[2]} {row[1]}"
        groups.setdefault((row[0], label), []).append(row)
    table: list[dict[str, Any]] = []
    for (kind, name), items in groups.items():
        times = sorted(r[4] for r in items)
        failed = sum(1 for r in items if r[5] or (kind == "client" and (r[3] or 0) >= 500))
        statuses = sorted({r[3] for r in items if kind == "client" and r[3]})
        table.append({"kind": kind, "name": name, "count": len(items), "failed": failed,
                      "p50": _pct(times, 50), "p95": _pct(times, 95),
                      "exceptions": sorted({r[5] for r in items if r[5]}), "statuses": statuses})
    table.sort(key=lambda r: (r["kind"], -r["count"]))
    return table


def print_routes(say: Say, table: list[dict[str, Any]]) -> None:
    head = (f"  {'route':<28} {'method':<6} {'count':>6} {'5xx':>5} {'4xx':>5} {'p50 ms':>8}"
            f" {'p95 ms':>8} {'p99 ms':>8} {'bytes in':>10} {'bytes out':>10}")
    say(head)
    say("  " + "-" * (len(head) - 2))
    for r in table:
        route = r["route"] if r["route"] != UNMATCHED else UNMATCHED + " *"
        say(f"  {route[:28]:<28} {r['method']:<6} {r['count']:>6} {r['errors']:>5}"
            f" {r['client_errors']:>5} {r['p50']:>8.2f} {r['p95']:>8.2f} {r['p99']:>8.2f}"
            f" {r['bytes_in']:>10} {r['bytes_out']:>10}")
    if any(r["route"] == UNMATCHED for r in table):
        say(f"  * {UNMATCHED}: paths no route matched (the demo sends those to this app only)")


def print_calls(say: Say, table: list[dict[str, Any]]) -> None:
    head = f"  {'kind':<7} {'name':<44} {'count':>6} {'failed':>6} {'p50 ms':>8} {'p95 ms':>8}"
    say(head)
    say("  " + "-" * (len(head) - 2))
    for r in table:
        extra = ", ".join(r["exceptions"]) or ", ".join(str(s) for s in r["statuses"])
        say(f"  {r['kind']:<7} {r['name'][:44]:<44} {r['count']:>6} {r['failed']:>6}"
            f" {r['p50']:>8.2f} {r['p95']:>8.2f}  {extra}")


def log_sample(db: str, log_file: str, pid: int) -> tuple[str | None, list[str]]:
    """A request id that logged in both apps (a Flask request and the call it made), and
    its JSON lines from the log file; (None, []) when there is none."""
    found = _rows(db, "SELECT a.request_id FROM logs a JOIN logs b ON a.request_id = b.request_id"
                      " WHERE a.logger = 'shop' AND b.logger = 'users' AND a.pid = ?"
                      " ORDER BY a.id DESC LIMIT 1", (pid,))
    if not found:
        return None, []
    rid = found[0][0]
    lines = []
    try:
        with open(log_file, encoding="utf-8") as f:
            for line in f:
                if rid in line:
                    try:
                        if json.loads(line).get("request_id") == rid:
                            lines.append(line.rstrip("\n"))
                    except ValueError:
                        continue
    except OSError:
        return rid, []
    return rid, lines
