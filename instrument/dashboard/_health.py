"""The kit's own health as one verdict: ok, degraded or failing, with the reasons.

``failing`` (HTTP 503) means data is being lost or not stored at all: the
flusher thread is dead, or a backend has failed many times in a row. Anything
that loses some data or may soon (samples dropped recently, a backend retrying,
the system collector stopped, an alert channel failing) is ``degraded`` (HTTP
200, so a load balancer keeps the instance while people look). Inside an
instrumented app the verdict comes from this process's flusher, collector and
alert manager; the standalone dashboard judges from what the store shows
(the kit's own columns in ``system_metrics`` and the alert outbox).
"""

from __future__ import annotations

import sqlite3
import sys
import time
from typing import Any

from instrument.core.batch import iso_utc
from instrument.dashboard._pgstore import has_table, is_pg
from instrument.storage.inflight import read_in_flight

__all__ = ["FAILING_AFTER", "DropWatch", "from_store", "in_process", "merge"]

#: Consecutive failed writes after which a backend counts as failing, not just degraded.
FAILING_AFTER = 5
_RECENT = 300.0  # seconds a drop keeps the verdict at degraded


class DropWatch:
    """Remembers when the drop counter last moved, so old drops stop degrading health."""

    def __init__(self) -> None:
        self.seen: int | None = None
        self.moved_at = 0.0

    def recent(self, dropped: int, now: float) -> bool:
        if dropped > 0 and (self.seen is None or dropped > self.seen):
            self.moved_at = now
        self.seen = dropped
        return dropped > 0 and now - self.moved_at < _RECENT


def in_process(stats: dict[str, Any], drops: DropWatch, now: float) -> tuple[list[str],
                                                                              list[str]]:
    """(failing reasons, degraded reasons) from ``instrument.stats()`` of this process."""
    failing: list[str] = []
    degraded: list[str] = []
    if not stats.get("enabled"):
        return failing, degraded
    if not stats.get("alive"):
        failing.append("the flusher thread is not running: samples are not being stored")
    dropped = int(stats.get("dropped") or 0)
    if drops.recent(dropped, now):
        degraded.append(f"{dropped} samples dropped because the buffer was full")
    for backend in stats.get("backends") or ():
        fails = int(backend.get("consecutive_failures") or 0)
        if not fails:
            continue
        text = (f"backend {backend.get('name')!r} failed {fails} time(s) in a row:"
                f" {backend.get('last_error')}")
        (failing if fails >= FAILING_AFTER else degraded).append(text)
    collector = sys.modules.get("instrument.system.current")
    current = getattr(collector, "_collector", None) if collector is not None else None
    if current is not None and getattr(current, "_thread", None) is not None \
            and not current.running:
        degraded.append("the system metrics collector has stopped")
    alerting = sys.modules.get("instrument.alerting")
    manager = getattr(alerting, "_manager", None) if alerting is not None else None
    if manager is not None:
        for name, ch in manager.health().get("channels", {}).items():
            if ch.get("failures") and (ch.get("last_failure") or "") > (ch.get("last_sent") or ""):
                degraded.append(f"alert channel {name!r} is failing: {ch.get('last_error')}")
    return failing, degraded


def from_store(conn: sqlite3.Connection | None, interval: float, now: float
               ) -> tuple[list[str], dict[str, Any]]:
    """(degraded reasons, facts) from the newest rows of the metrics file."""
    facts: dict[str, Any] = {"last_request_minute": None, "last_system_reading": None,
                             "http_requests_in_flight": None}
    reasons: list[str] = []
    if conn is None:
        return reasons, facts
    try:
        row = conn.execute("SELECT MAX(minute) FROM metric_rollups").fetchone()
        facts["last_request_minute"] = row[0]
        row = conn.execute("SELECT MAX(timestamp) FROM system_metrics").fetchone()
        facts["last_system_reading"] = row[0]
        since = iso_utc(now - _RECENT)
        # On a fleet's store pids repeat across machines (pid 1 in every container).
        who = "host || ':' || pid" if is_pg(conn) else "pid"
        rows = conn.execute(
            f"SELECT {who}, MAX(kit_dropped) - MIN(kit_dropped), MAX(kit_backend_errors)"
            " - MIN(kit_backend_errors) FROM system_metrics WHERE timestamp >= ?"
            " GROUP BY 1", (since,)).fetchall()
    except sqlite3.OperationalError:  # an older file without these tables or columns
        return reasons, facts
    for pid, dropped, errors in rows:
        if dropped:
            reasons.append(f"process {pid} dropped {dropped} samples in the last 5 minutes")
        if errors:
            reasons.append(f"process {pid} had {errors} backend errors in the last 5 minutes")
    if has_table(conn, "process_in_flight"):  # absent from a store not migrated since
        # the sum the Prometheus gauge exports: live processes' counts at their last flush
        facts["http_requests_in_flight"] = read_in_flight(conn, now=now)[0]
    last = facts["last_system_reading"]
    if last and last < iso_utc(now - 3 * interval) and last >= iso_utc(now - 86400):
        reasons.append(f"no system metrics since {last} (collector stopped?)")
    return reasons, facts


def merge(failing: list[str], degraded: list[str], checks: dict[str, Any]) -> tuple[int,
                                                                                  dict[str, Any]]:
    """The HTTP status and body of the health endpoint."""
    status = "failing" if failing else "degraded" if degraded else "ok"
    body = {"status": status, "reasons": [*failing, *degraded], "checked_at": iso_utc(time.time()),
            "checks": checks}
    return (503 if failing else 200), body
