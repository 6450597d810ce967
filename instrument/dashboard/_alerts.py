"""The alerts the dashboard shows, and acknowledging one through the alert manager.

Listing reads the alert manager's SQLite file directly (read-only, so the
standalone dashboard can show any app's alerts). Acknowledging goes through
:class:`instrument.alerting.AlertManager`, which owns the state machine, the
history and the outbox that tells PagerDuty and webhooks: the process's own
manager when one runs on the same file, otherwise a private manager that never
evaluates and only records the acknowledgement (the app's evaluating manager
picks it up, since it reloads state another process committed).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from typing import Any

from instrument.core.forkguard import sqlite_section

__all__ = ["AlertsView", "Conflict"]

_ALERT_COLUMNS = ("id", "name", "description", "severity", "status", "created_at", "updated_at",
                  "resolved_at", "acknowledged_at", "acknowledged_by", "metadata")


class Conflict(Exception):
    """The alert exists but cannot be acknowledged (it is resolved)."""


class AlertsView:
    """Alerts of one ``INSTRUMENT_ALERTS_DB`` file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._manager: Any = None
        self._lock = threading.Lock()

    # -- reading ------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return os.path.exists(self.path)

    def _rows(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        if not self.available:
            return []
        # A connection per call: alert reads are rare and small, and servers may run
        # every request on a new thread. No fork while it is open (see _forkguard).
        with sqlite_section():
            conn = sqlite3.connect(f"file:{os.path.abspath(self.path)}?mode=ro", uri=True,
                                   timeout=5.0, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout = 5000")
                cur = conn.execute(sql, args)
                names = [d[0] for d in cur.description]
                rows = cur.fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc) or "no such column" in str(exc):
                    return []
                raise
            finally:
                conn.close()
        out = []
        for row in rows:
            item = dict(zip(names, row, strict=True))
            if isinstance(item.get("metadata"), str):
                try:
                    item["metadata"] = json.loads(item["metadata"])
                except ValueError:
                    pass
            out.append(item)
        return out

    def listing(self, limit: int) -> dict[str, Any]:
        """Firing alerts, the most recent alerts of any state, and recent history events."""
        active = self._rows("SELECT * FROM alerts WHERE status = 'firing'"
                            " ORDER BY created_at DESC LIMIT 500", ())
        recent = self._rows("SELECT * FROM alerts ORDER BY updated_at DESC LIMIT ?", (limit,))
        events = self._rows("SELECT timestamp, rule, alert_id, event, detail FROM alert_history"
                            " ORDER BY id DESC LIMIT ?", (limit,))
        return {"available": self.available, "active": active, "history": recent,
                "events": events}

    def get(self, alert_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM alerts WHERE id = ?", (alert_id,))
        return rows[0] if rows else None

    def channel_problems(self) -> list[str]:
        """Channels whose notifications are being retried or were given up on in the last day."""
        rows = self._rows(
            "SELECT channel, SUM(status = 'failed'), SUM(status = 'queued' AND attempts > 0),"
            " MAX(last_error) FROM alert_notifications"
            " WHERE created_at >= strftime('%Y-%m-%dT%H:%M:%f', 'now', '-1 day')"
            " GROUP BY channel", ())
        problems = []
        for row in rows:
            name, failed, retrying, last_error = row.values()
            if failed or retrying:
                # the error says what to change (a setting, a server), so it is shown too
                why = f": {last_error}" if last_error else ""
                problems.append(f"alert channel {name!r}: {failed or 0} notification(s) given up,"
                                f" {retrying or 0} being retried{why}")
        return problems

    # -- acknowledging ------------------------------------------------------------------
    def acknowledge(self, alert_id: str, by: str) -> dict[str, Any] | None:
        """Acknowledge a firing alert; None if there is no such alert, Conflict if resolved."""
        row = self.get(alert_id)
        if row is None:
            return None
        if row.get("acknowledged_at"):
            return row
        if row.get("status") != "firing":
            raise Conflict(f"Alert {alert_id!r} is {row.get('status')}; only firing alerts can"
                           " be acknowledged.")
        manager = self._manager_for(row)
        manager.acknowledge(alert_id, by=by)
        return self.get(alert_id)

    def _manager_for(self, row: dict[str, Any]) -> Any:
        from instrument import alerting

        shared = alerting._manager
        if (shared is not None and row["name"] in shared.rules
                and _same_file(shared.settings.alerts_db, self.path)):
            return shared
        with self._lock:
            if self._manager is None:
                # Never evaluates; its channels (from the environment) are only the outbox
                # targets the app's evaluating manager will deliver the acknowledgement to.
                self._manager = alerting.AlertManager(db_path=self.path, default_rules=False)
            manager = self._manager
            # The alert's own name, text and labels, so the row is rewritten as the app wrote it.
            manager.add_rule(_stand_in_rule(row))
        return manager

    def close(self) -> None:
        with self._lock:
            manager, self._manager = self._manager, None
        if manager is not None:
            manager.close()


def _stand_in_rule(row: dict[str, Any]) -> Any:
    """A rule with the alert's name, text and labels that never fires: enough to record an ack."""
    from instrument.alerting import AlertRule, AlertSeverity, Threshold

    raw = row.get("metadata")
    meta: dict[str, Any] = raw if isinstance(raw, dict) else {}
    condition: Any = _never
    if isinstance(meta.get("threshold"), str):
        try:
            condition = Threshold.parse(meta["threshold"])
        except ValueError:
            pass
    return AlertRule(name=row["name"], description=row.get("description") or "",
                     severity=AlertSeverity(row.get("severity") or "medium"), condition=condition,
                     labels=dict(meta.get("labels") or {}))


def _never(metrics: Any) -> bool:
    return False


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
