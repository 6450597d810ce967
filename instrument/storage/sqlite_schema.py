"""The SQLite schema, versioned with ``PRAGMA user_version`` and migrated forward only.

``api_metrics`` and ``system_metrics`` keep the seed's columns in the seed's
order (extra columns come after), so the seed's queries keep working.
"""

from __future__ import annotations

import sqlite3

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

MIGRATIONS: list[str] = [
    # 1: requests, calls, rollups and the seed's system metrics
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
    # 2: process and kit health beside the seed's system columns, application gauges and
    # counters, and the coarser tiers that keep summaries fast (backends/_sqlite_metrics.py):
    # metric_rollups_coarse holds the minute rollups summed per 10 minutes, hour and 6 hours
    # (period 600 / 3600 / 21600, start = its first second); metric_histograms holds
    # per-route latency histograms (all status codes) per minute and per each of those
    # periods, each a packed little-endian int64 array [lowest bucket, count, count, ...].
    """
    ALTER TABLE system_metrics ADD COLUMN process_rss_mb REAL;
    ALTER TABLE system_metrics ADD COLUMN process_cpu_percent REAL;
    ALTER TABLE system_metrics ADD COLUMN process_threads INTEGER;
    ALTER TABLE system_metrics ADD COLUMN process_open_files INTEGER;
    ALTER TABLE system_metrics ADD COLUMN kit_buffered INTEGER;
    ALTER TABLE system_metrics ADD COLUMN kit_dropped INTEGER;
    ALTER TABLE system_metrics ADD COLUMN kit_flush_ms REAL;
    ALTER TABLE system_metrics ADD COLUMN kit_backend_errors INTEGER;
    ALTER TABLE system_metrics ADD COLUMN pid INTEGER;
    CREATE TABLE IF NOT EXISTS app_metrics (
        id INTEGER PRIMARY KEY,
        timestamp TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        value REAL,
        pid INTEGER,
        created_at TEXT DEFAULT CURRENT_TIMESTAMP
    );
    CREATE INDEX IF NOT EXISTS idx_app_metrics_timestamp ON app_metrics(timestamp);
    CREATE INDEX IF NOT EXISTS idx_app_metrics_name ON app_metrics(name, timestamp);
    CREATE TABLE IF NOT EXISTS metric_rollups_coarse (
        period INTEGER NOT NULL,
        start INTEGER NOT NULL,
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
        PRIMARY KEY (period, start, kind, name, method, status_code)
    ) WITHOUT ROWID;
    INSERT INTO metric_rollups_coarse
        SELECT p.period, (minute / p.period) * p.period, kind, name, method, status_code,
               sum(count), sum(errors), sum(sum_ms), max(max_ms), sum(sum_ttfb_ms),
               sum(request_bytes), sum(response_bytes)
        FROM metric_rollups,
             (SELECT 600 AS period UNION ALL SELECT 3600 UNION ALL SELECT 21600) AS p
        GROUP BY 1, 2, 3, 4, 5, 6;
    CREATE TABLE IF NOT EXISTS metric_histograms (
        period INTEGER NOT NULL,
        start INTEGER NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        method TEXT NOT NULL,
        hist BLOB NOT NULL,
        PRIMARY KEY (period, start, kind, name, method)
    ) WITHOUT ROWID;
    """,
    # 3: log lines shipped by instrument.logs.StoreHandler, with an external-content FTS5
    # index over message and exception that backends/_sqlite_logs.py keeps in step (no
    # triggers: statements here are split on ';'), and the id range each minute's lines
    # were stored under, which turns a time window into exact rowid bounds for search.
    """
    CREATE TABLE IF NOT EXISTS logs (
        id INTEGER PRIMARY KEY,
        timestamp TEXT NOT NULL,
        level TEXT NOT NULL,
        levelno INTEGER NOT NULL,
        logger TEXT NOT NULL,
        message TEXT NOT NULL,
        exception TEXT,
        extra TEXT,
        request_id TEXT,
        route TEXT,
        method TEXT,
        pid INTEGER
    );
    CREATE INDEX IF NOT EXISTS idx_logs_timestamp ON logs(timestamp);
    CREATE INDEX IF NOT EXISTS idx_logs_request_id ON logs(request_id)
        WHERE request_id IS NOT NULL;
    CREATE INDEX IF NOT EXISTS idx_logs_logger ON logs(logger);
    CREATE INDEX IF NOT EXISTS idx_logs_levelno ON logs(levelno);
    CREATE VIRTUAL TABLE IF NOT EXISTS logs_fts USING fts5(
        message, exception, content='logs', content_rowid='id'
    );
    CREATE TABLE IF NOT EXISTS logs_minutes (
        minute INTEGER PRIMARY KEY,
        first_id INTEGER NOT NULL,
        last_id INTEGER NOT NULL
    );
    """,
    # 4: cumulative totals since the file was created, for the Prometheus exposition
    # (backends/_sqlite_totals.py). Every writer adds its batch's deltas in the batch's own
    # transaction, so totals cover all workers ever started in one row per series, and
    # retention never deletes them (counters must not go backwards). family is 'duration'
    # (log-linear ms buckets of instrument.core.histogram) or 'request_size' / 'response_size'
    # (bucket b holds sizes n with 2**(b-1) < n <= 2**b). metric_total_counters holds the
    # exceptions by type (metric 'exceptions', label = type) and the kit's own counters.
    """
    CREATE TABLE IF NOT EXISTS metric_totals (
        host TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        method TEXT NOT NULL,
        status_code INTEGER NOT NULL,
        count INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        sum_ms REAL NOT NULL,
        request_bytes INTEGER NOT NULL,
        response_bytes INTEGER NOT NULL,
        PRIMARY KEY (host, kind, name, method, status_code)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS metric_total_buckets (
        host TEXT NOT NULL,
        family TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        method TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (host, family, kind, name, method, bucket)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS metric_total_counters (
        host TEXT NOT NULL,
        metric TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        method TEXT NOT NULL,
        label TEXT NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (host, metric, kind, name, method, label)
    ) WITHOUT ROWID;
    """,
    # 5: HTTP requests in flight, one row per process (host, pid) that served any: its latest
    # reading, when it was taken and until when readers count it (instrument/core/inflight.py).
    # Readers sum the rows not yet expired through the index; writers delete long-expired ones.
    """
    CREATE TABLE IF NOT EXISTS process_in_flight (
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        in_flight INTEGER NOT NULL,
        written_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (host, pid)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS idx_process_in_flight_expires ON process_in_flight(expires_at);
    """,
    # 6: exemplar requests (instrument/core/exemplars.py): per route and minute the slowest few
    # and the failing ones each process kept, with what identifies them (request and trace
    # id, the raw path and query string, client, user agent). reason is 'slow' or 'error'.
    """
    CREATE TABLE IF NOT EXISTS request_exemplars (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        timestamp TEXT NOT NULL,
        minute INTEGER NOT NULL,
        request_id TEXT,
        trace_id TEXT,
        method TEXT NOT NULL,
        route TEXT NOT NULL,
        path TEXT,
        query TEXT,
        status_code INTEGER NOT NULL,
        duration_ms REAL NOT NULL,
        ttfb_ms REAL,
        request_bytes INTEGER NOT NULL,
        response_bytes INTEGER NOT NULL,
        client TEXT,
        user_agent TEXT,
        exception TEXT,
        reason TEXT NOT NULL,
        pid INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS idx_request_exemplars_route
        ON request_exemplars(route, method, minute);
    CREATE INDEX IF NOT EXISTS idx_request_exemplars_minute ON request_exemplars(minute);
    CREATE INDEX IF NOT EXISTS idx_request_exemplars_request_id ON request_exemplars(request_id);
    """,
    # 7: error groups (instrument/core/errors.py): one row per group, its latest message and
    # traceback (JSON: frames with file, line, function and source line, no locals), and one
    # row per occurrence, which says where (kind, route, method) and which request.
    """
    CREATE TABLE IF NOT EXISTS error_groups (
        group_id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        message TEXT,
        culprit TEXT,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        count INTEGER NOT NULL,
        traceback TEXT
    );
    CREATE INDEX IF NOT EXISTS idx_error_groups_last_seen ON error_groups(last_seen);
    CREATE TABLE IF NOT EXISTS error_occurrences (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        timestamp TEXT NOT NULL,
        minute INTEGER NOT NULL,
        group_id TEXT NOT NULL,
        request_id TEXT,
        trace_id TEXT,
        kind TEXT NOT NULL,
        route TEXT NOT NULL,
        method TEXT NOT NULL,
        status_code INTEGER NOT NULL,
        pid INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS idx_error_occurrences_group ON error_occurrences(group_id, minute);
    CREATE INDEX IF NOT EXISTS idx_error_occurrences_minute ON error_occurrences(minute);
    CREATE INDEX IF NOT EXISTS idx_error_occurrences_request_id
        ON error_occurrences(request_id);
    """,
    # 8: the sampling profiler's collapsed stacks (instrument/core/profiler.py): samples per
    # route, method and stack, a row per process and hand-over (readers add them up).
    """
    CREATE TABLE IF NOT EXISTS profile_stacks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        minute INTEGER NOT NULL,
        route TEXT NOT NULL,
        method TEXT NOT NULL,
        stack TEXT NOT NULL,
        samples INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS idx_profile_stacks_route ON profile_stacks(route, minute);
    CREATE INDEX IF NOT EXISTS idx_profile_stacks_minute ON profile_stacks(minute);
    """,
    # 9: the process a profile row came from (a row per process and hand-over).
    """
    ALTER TABLE profile_stacks ADD COLUMN pid INTEGER;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

#: Columns migration 1 puts after the seed's in api_metrics. A file the seed itself created
#: already has api_metrics, so CREATE TABLE IF NOT EXISTS skips them and they are added here.
_KIT_API_COLUMNS = (("ttfb_ms", "REAL"), ("exception", "TEXT"),
                    ("client_disconnected", "INTEGER DEFAULT 0"), ("pid", "INTEGER"))


def _complete_seed_api_metrics(conn: sqlite3.Connection) -> None:
    have = {row[1] for row in conn.execute("PRAGMA table_info(api_metrics)")}
    for name, decl in _KIT_API_COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE api_metrics ADD COLUMN {name} {decl}")


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
            if number == 0:
                _complete_seed_api_metrics(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION
