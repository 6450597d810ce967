"""The alerts database schema: the seed's ``alerts`` table plus what durability needs.

``alerts`` keeps the seed's columns in the seed's order (``acknowledged_by``
comes after). ``alert_rule_state`` is each rule's state-machine memory (JSON),
``alert_history`` the audit trail, ``alert_notifications`` the outbox, and
``alert_lease`` says which process evaluates. Tables are only ever added to.
"""

from __future__ import annotations

__all__ = ["SCHEMA"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    resolved_at TEXT,
    acknowledged_at TEXT,
    metadata TEXT,
    acknowledged_by TEXT
);
CREATE INDEX IF NOT EXISTS idx_alerts_status ON alerts(status);
CREATE TABLE IF NOT EXISTS alert_rule_state (
    rule TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    data TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_history (
    id INTEGER PRIMARY KEY,
    timestamp TEXT NOT NULL,
    rule TEXT NOT NULL,
    alert_id TEXT,
    event TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS idx_alert_history_timestamp ON alert_history(timestamp);
CREATE TABLE IF NOT EXISTS alert_notifications (
    id INTEGER PRIMARY KEY,
    alert_id TEXT,
    rule TEXT NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    sent_at TEXT,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS idx_alert_notifications_due ON alert_notifications(status, next_attempt);
CREATE TABLE IF NOT EXISTS alert_lease (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires REAL NOT NULL,
    last_eval REAL
);
"""
