"""The SQLite schema, versioned with ``PRAGMA user_version`` and migrated forward only.

``api_metrics`` and ``system_metrics`` keep the seed's columns in the seed's
order (extra columns come after), so the seed's queries keep working.
"""

from __future__ import annotations

import sqlite3

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

MIGRATIONS: list[str] = [
    # 1: requests, calls, rollups, system and application metrics
    """
    CREATE TABLE IF NOT EXISTS api_metrics (
        id INTEGER PRIMARY KEY,
        timestamp TEXT NOT NULL,
        endpoint TEXT,
        method TEXT,
        status_code INTEGER,
        response_time_ms REAL,
        request_size_bytes INTEGER,
        response_size_bytes INTEGER,
        error_count INTEGER DEFAULT 0,
        created_at TEXT DEFAULT CURRENT_TIMESTAMP,
        ttfb_ms REAL,
        exception TEXT,
        client_disconnected INTEGER DEFAULT 0,
        pid INTEGER
    );
    CREATE INDEX IF NOT EXISTS idx_api_metrics_timestamp ON api_metrics(timestamp);
    CREATE TABLE IF NOT EXISTS call_metrics (
        id INTEGER PRIMARY KEY,
        timestamp TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT,
        method TEXT,
        status_code INTEGER,
        duration_ms REAL,
        exception TEXT,
        pid INTEGER,
        created_at TEXT DEFAULT CURRENT_TIMESTAMP
    );
    CREATE INDEX IF NOT EXISTS idx_call_metrics_timestamp ON call_metrics(timestamp);
    CREATE TABLE IF NOT EXISTS metric_rollups (
        minute INTEGER NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        method TEXT NOT NULL,
        status_code INTEGER NOT NULL,
        count INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        sum_ms REAL NOT NULL,
        max_ms REAL NOT NULL,
        sum_ttfb_ms REAL NOT NULL,
        request_bytes INTEGER NOT NULL,
        response_bytes INTEGER NOT NULL,
        PRIMARY KEY (minute, kind, name, method, status_code)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS metric_rollup_buckets (
        minute INTEGER NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        method TEXT NOT NULL,
        status_code INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (minute, kind, name, method, status_code, bucket)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS system_metrics (
        id INTEGER PRIMARY KEY,
        timestamp TEXT NOT NULL,
        cpu_percent REAL,
        memory_percent REAL,
        memory_used_mb REAL,
        memory_available_mb REAL,
        disk_usage_percent REAL,
        disk_free_gb REAL,
        network_bytes_sent INTEGER,
        network_bytes_recv INTEGER,
        active_connections INTEGER,
        created_at TEXT DEFAULT CURRENT_TIMESTAMP
    );
    CREATE INDEX IF NOT EXISTS idx_system_metrics_timestamp ON system_metrics(timestamp);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the file up to SCHEMA_VERSION; safe when several processes start at once."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= SCHEMA_VERSION:
        return int(version)
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION
