"""Durable alert state: the seed's ``alerts`` table plus rule state, history and an outbox.

Everything one evaluation decides (new rule states, alert rows, history lines
and the notifications to send) is written in one transaction, before anything
is sent. A crash therefore loses nothing: on restart the states say what
receivers were told, and queued notifications are still in the outbox. A
notification leaves the outbox only once its channel accepted it.

A lease row makes one process the evaluator when several (gunicorn workers)
share the file, so a page is not sent once per worker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from instrument.alerting.schema import SCHEMA
from instrument.alerting.state import Alert, AlertStatus, RuleState
from instrument.core.batch import iso_utc
from instrument.core.forkguard import sqlite_section
from instrument.storage.sqlite import file_trouble, unopenable

__all__ = ["AlertStore", "Outgoing"]


History = tuple[float, str, "str | None", str, str]  # (ts, rule, alert_id, event, detail)


@dataclasses.dataclass
class Outgoing:
    """One queued notification: for ``channel``, the serialised event in ``payload``."""

    id: int
    channel: str
    kind: str
    rule: str
    alert_id: str | None
    payload: dict[str, Any]
    attempts: int
    created_at: str


def _state_json(st: RuleState) -> str:
    data = dataclasses.asdict(st)
    data["state"] = st.state.value
    return json.dumps(data)


def _state_from_json(text: str) -> RuleState:
    data = json.loads(text)
    known = {f.name for f in dataclasses.fields(RuleState)}
    data = {k: v for k, v in data.items() if k in known}
    data["state"] = AlertStatus(data.get("state", "inactive"))
    return RuleState(**data)


def _iso(dt: Any) -> str | None:
    return None if dt is None else iso_utc(dt.timestamp())


class AlertStore:
    """SQLite file holding the alert manager's memory; safe to share between processes."""

    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._lock = threading.Lock()
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with sqlite_section():
                self._conn = self._open()
        except (OSError, sqlite3.Error) as exc:
            if not file_trouble(exc):
                raise  # another writer ("locked"), not the path: the caller's retry applies
            raise unopenable(path, exc, "INSTRUMENT_ALERTS_DB") from None
        self._pid = os.getpid()
        self._inherited: list[sqlite3.Connection] = []
        self._data_version: int | None = None

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000):d}")
        conn.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL: a crashed process loses nothing; only power loss may drop the last commit.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(SCHEMA)
        return conn

    @contextmanager
    def _use(self) -> Iterator[None]:
        """Hold the lock; after a fork, first swap in a connection (and lock) of our own.

        The fork guard's section comes first, outside the lock: a thread that waits for a
        fork to finish must not hold the lock a thread inside its section may wait for.
        """
        with sqlite_section():
            if self._pid != os.getpid():
                # SQLite connections must not cross fork; the parent's is kept, never closed.
                self._inherited.append(self._conn)
                self._lock = threading.Lock()
                self._conn = self._open()
                self._pid = os.getpid()
                self._data_version = None
            with self._lock:
                yield

    def __repr__(self) -> str:
        return f"AlertStore(path={self.path!r})"

    def changed(self) -> bool:
        """Whether another connection (process) committed since the last call.

        ``PRAGMA data_version`` only moves for other connections' commits, so the
        evaluator reloads rule state only when someone else (an acknowledgement
        from another worker, a previous leader) wrote it.
        """
        with self._use():
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        changed = version != self._data_version
        self._data_version = version
        return changed

    def close(self) -> None:
        with self._use():
            self._conn.close()

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._use():
            cur = self._conn.execute(sql, args)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    # -- lease ------------------------------------------------------------------------------

    def acquire_lease(self, owner: str, now: float, ttl: float) -> tuple[bool, float | None]:
        """Take or renew the evaluator lease; returns (ours, previous last evaluation)."""
        with self._use():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute(
                    "SELECT owner, expires, last_eval FROM alert_lease WHERE name='evaluator'"
                ).fetchone()
                if row is not None and row[0] != owner and row[1] > now and _alive(row[0]):
                    self._conn.execute("COMMIT")
                    return False, row[2]
                self._conn.execute(
                    "INSERT INTO alert_lease VALUES ('evaluator', ?, ?, ?) ON CONFLICT(name) DO"
                    " UPDATE SET owner=excluded.owner, expires=excluded.expires,"
                    " last_eval=excluded.last_eval", (owner, now + ttl, now))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return True, None if row is None else row[2]

    def release_lease(self, owner: str) -> None:
        with self._use():
            self._conn.execute("UPDATE alert_lease SET expires = 0 WHERE name='evaluator'"
                               " AND owner = ?", (owner,))

    # -- evaluation results -----------------------------------------------------------------

    def load_states(self) -> dict[str, RuleState]:
        rows = self._query("SELECT rule, data FROM alert_rule_state")
        return {r["rule"]: _state_from_json(r["data"]) for r in rows}

    def save(self, now: float, states: Iterable[RuleState], alerts: Iterable[Alert],
             history: Iterable[History], outbox: Iterable[tuple[str, str, str, str | None,
                                                                dict[str, Any]]],
             deleted: Iterable[str] = ()) -> None:
        """Write one evaluation's decisions atomically (outbox rows: channel, kind, rule,
        alert_id, payload)."""
        ts = iso_utc(now)
        with self._use():
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany(
                    "INSERT INTO alert_rule_state VALUES (?,?,?,?) ON CONFLICT(rule) DO UPDATE"
                    " SET state=excluded.state, data=excluded.data, updated_at=excluded.updated_at",
                    [(s.rule, s.state.value, _state_json(s), ts) for s in states])
                c.executemany("DELETE FROM alert_rule_state WHERE rule = ?",
                              [(r,) for r in deleted])
                c.executemany(
                    "INSERT INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE"
                    " SET description=excluded.description, severity=excluded.severity,"
                    " status=excluded.status, updated_at=excluded.updated_at,"
                    " resolved_at=excluded.resolved_at, acknowledged_at=excluded.acknowledged_at,"
                    " metadata=excluded.metadata, acknowledged_by=excluded.acknowledged_by",
                    [(a.id, a.name, a.description, a.severity.value, a.status,
                      _iso(a.created_at), _iso(a.updated_at), _iso(a.resolved_at),
                      _iso(a.acknowledged_at), json.dumps(a.metadata), a.acknowledged_by)
                     for a in alerts])
                c.executemany("INSERT INTO alert_history (timestamp, rule, alert_id, event, detail)"
                              " VALUES (?,?,?,?,?)",
                              [(iso_utc(h[0]), h[1], h[2], h[3], h[4]) for h in history])
                c.executemany(
                    "INSERT INTO alert_notifications (channel, kind, rule, alert_id, payload,"
                    " created_at, next_attempt) VALUES (?,?,?,?,?,?,?)",
                    [(o[0], o[1], o[2], o[3], json.dumps(o[4]), ts, now) for o in outbox])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    # -- outbox -----------------------------------------------------------------------------

    def due(self, now: float, limit: int = 500) -> list[Outgoing]:
        rows = self._query(
            "SELECT id, channel, kind, rule, alert_id, payload, attempts, created_at"
            " FROM alert_notifications AS n WHERE status = 'queued' AND next_attempt <= ?"
            # Order per channel and alert: nothing overtakes an earlier notification that waits.
            " AND NOT EXISTS (SELECT 1 FROM alert_notifications AS p WHERE p.status = 'queued'"
            " AND p.channel = n.channel AND p.alert_id IS n.alert_id AND p.id < n.id"
            " AND p.next_attempt > ?) ORDER BY id LIMIT ?", (now, now, limit))
        for r in rows:
            r["payload"] = json.loads(r["payload"])
        return [Outgoing(**r) for r in rows]

    def mark_sent(self, ids: Sequence[int], now: float, history: Iterable[History]) -> None:
        self._finish([("sent", None, None, i) for i in ids], now, history)

    def mark_failed(self, items: Sequence[tuple[int, bool, float, str]], now: float,
                    history: Iterable[History]) -> None:
        """items: (id, final, next_attempt, error); final ones stop being retried."""
        self._finish([("failed" if final else "queued", nxt, err, i)
                      for i, final, nxt, err in items], now, history)

    def _finish(self, rows: list[tuple[str, float | None, str | None, int]], now: float,
                history: Iterable[History]) -> None:
        ts = iso_utc(now)
        with self._use():
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                for status, nxt, err, i in rows:
                    if status == "sent":
                        c.execute("UPDATE alert_notifications SET status='sent', sent_at=?,"
                                  " attempts=attempts+1 WHERE id=?", (ts, i))
                    else:
                        c.execute("UPDATE alert_notifications SET status=?, last_error=?,"
                                  " attempts=attempts+1, next_attempt=COALESCE(?, next_attempt)"
                                  " WHERE id=?", (status, err, nxt, i))
                c.executemany("INSERT INTO alert_history (timestamp, rule, alert_id, event, detail)"
                              " VALUES (?,?,?,?,?)",
                              [(iso_utc(h[0]), h[1], h[2], h[3], h[4]) for h in history])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    # -- queries ----------------------------------------------------------------------------

    def history(self, *, limit: int = 100, rule: str | None = None,
                alert_id: str | None = None) -> list[dict[str, Any]]:
        where, args = _filters(rule=rule, alert_id=alert_id)
        return self._query(f"SELECT timestamp, rule, alert_id, event, detail FROM alert_history"
                           f"{where} ORDER BY id DESC LIMIT ?", (*args, limit))

    def notifications(self, *, limit: int = 100, status: str | None = None,
                      channel: str | None = None) -> list[dict[str, Any]]:
        where, args = _filters(status=status, channel=channel)
        return self._query(f"SELECT id, alert_id, rule, channel, kind, created_at, status,"
                           f" attempts, sent_at, last_error FROM alert_notifications{where}"
                           f" ORDER BY id DESC LIMIT ?", (*args, limit))

    def alerts(self, *, limit: int = 100, status: str | None = None,
               alert_id: str | None = None) -> list[dict[str, Any]]:
        where, args = _filters(status=status, id=alert_id)
        rows = self._query(f"SELECT * FROM alerts{where} ORDER BY created_at DESC LIMIT ?",
                           (*args, limit))
        for r in rows:
            r["metadata"] = json.loads(r["metadata"] or "{}")
        return rows

    def counts(self) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*) AS n FROM alert_notifications GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    def sweep(self, before: float) -> None:
        """Forget history and finished notifications older than ``before``."""
        ts = iso_utc(before)
        with self._use():
            self._conn.execute("DELETE FROM alert_history WHERE timestamp < ?", (ts,))
            self._conn.execute("DELETE FROM alert_notifications WHERE status != 'queued'"
                               " AND created_at < ?", (ts,))


def _filters(**conds: Any) -> tuple[str, list[Any]]:
    used = [(k, v) for k, v in conds.items() if v is not None]
    if not used:
        return "", []
    return " WHERE " + " AND ".join(f"{k} = ?" for k, _ in used), [v for _, v in used]


def _alive(owner: str) -> bool:
    """Whether a lease owner ``host:pid:token`` may still be running (dead local pids are not)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != os.uname().nodename or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
