"""The SQLite backend: seed schema, migrations, exact rollups, many writers, retention, locks."""

from __future__ import annotations

import calendar
import math
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import instrument
from instrument.backends.sqlite import SQLiteBackend, connect
from instrument.core.aggregate import Aggregator
from instrument.core.histogram import bucket_index, percentile
from instrument.core.runtime import runtime
from instrument.storage.sqlite_schema import SCHEMA_VERSION, migrate

# (name, declared type, not null, default, primary key) exactly as the seed declares them.
SEED_API = [
    ("id", "INTEGER", 0, None, 1),
    ("timestamp", "TEXT", 1, None, 0),
    ("endpoint", "TEXT", 0, None, 0),
    ("method", "TEXT", 0, None, 0),
    ("status_code", "INTEGER", 0, None, 0),
    ("response_time_ms", "REAL", 0, None, 0),
    ("request_size_bytes", "INTEGER", 0, None, 0),
    ("response_size_bytes", "INTEGER", 0, None, 0),
    ("error_count", "INTEGER", 0, "0", 0),
    ("created_at", "TEXT", 0, "CURRENT_TIMESTAMP", 0),
]
SEED_SYSTEM = [
    ("id", "INTEGER", 0, None, 1),
    ("timestamp", "TEXT", 1, None, 0),
    ("cpu_percent", "REAL", 0, None, 0),
    ("memory_percent", "REAL", 0, None, 0),
    ("memory_used_mb", "REAL", 0, None, 0),
    ("memory_available_mb", "REAL", 0, None, 0),
    ("disk_usage_percent", "REAL", 0, None, 0),
    ("disk_free_gb", "REAL", 0, None, 0),
    ("network_bytes_sent", "INTEGER", 0, None, 0),
    ("network_bytes_recv", "INTEGER", 0, None, 0),
    ("active_connections", "INTEGER", 0, None, 0),
    ("created_at", "TEXT", 0, "CURRENT_TIMESTAMP", 0),
]
SEED_API_DDL = """
CREATE TABLE api_metrics (
    id INTEGER PRIMARY KEY,
    timestamp TEXT NOT NULL,
    endpoint TEXT,
    method TEXT,
    status_code INTEGER,
    response_time_ms REAL,
    request_size_bytes INTEGER,
    response_size_bytes INTEGER,
    error_count INTEGER DEFAULT 0,
    created_at TEXT DEFAULT CURRENT_TIMESTAMP
);
"""


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    return [tuple(r[1:6]) for r in conn.execute(f"PRAGMA table_info({table})")]


def _http(t0: float, ms: float, route: str = "/items/{id}", method: str = "GET",
          status: int | str = 200, exc: type[BaseException] | None = None,
          ttfb_ms: float | None = None) -> tuple[Any, ...]:
    tf = t0 + ttfb_ms / 1000 if ttfb_ms is not None else 0.0
    return ("http", t0, t0 + ms / 1000, tf, route, method, status, 100, 2000, exc, False)


def _minute(iso: str) -> int:
    return calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")) // 60 * 60


def test_seed_columns_come_first_in_the_seed_order(db_path: Path) -> None:
    """api_metrics and system_metrics start with the seed's columns, same types and defaults."""
    conn = connect(str(db_path))
    api = _columns(conn, "api_metrics")
    system = _columns(conn, "system_metrics")
    assert api[: len(SEED_API)] == SEED_API
    extras = [c[0] for c in api[len(SEED_API):]]
    assert {"ttfb_ms", "exception", "client_disconnected", "pid"} <= set(extras)
    assert system[: len(SEED_SYSTEM)] == SEED_SYSTEM


def test_user_version_and_wal_mode(db_path: Path) -> None:
    """A new file carries PRAGMA user_version == SCHEMA_VERSION and stays in WAL mode."""
    connect(str(db_path)).close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrate_is_idempotent(db_path: Path) -> None:
    """Running the migrations again changes neither the schema nor the data."""
    conn = connect(str(db_path))
    conn.execute("INSERT INTO api_metrics (timestamp, endpoint)"
                 " VALUES ('2024-01-01T00:00:00', '/a')")
    schema = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    assert migrate(conn) == SCHEMA_VERSION
    assert migrate(conn) == SCHEMA_VERSION
    connect(str(db_path)).close()
    assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema
    assert conn.execute("SELECT endpoint FROM api_metrics").fetchall() == [("/a",)]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_database_created_by_the_seed_is_upgraded_in_place(db_path: Path) -> None:
    """Pointing the kit at the seed's metrics.db keeps its rows and adds the kit's columns."""
    recent = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 3600))
    with sqlite3.connect(db_path) as seed:
        seed.executescript(SEED_API_DDL)
        seed.execute("INSERT INTO api_metrics (timestamp, endpoint, method, status_code,"
                     " response_time_ms) VALUES (?, '/old', 'GET', 200, 1.5)", (recent,))
    seed.close()
    backend = SQLiteBackend(str(db_path))
    t0 = time.perf_counter()
    backend.write(Aggregator().aggregate([_http(t0, 12.0, route="/new")]))
    backend.close()
    conn = sqlite3.connect(db_path)
    assert _columns(conn, "api_metrics")[: len(SEED_API)] == SEED_API
    rows = conn.execute("SELECT endpoint, pid FROM api_metrics ORDER BY id").fetchall()
    assert rows == [("/old", None), ("/new", os.getpid())]
    # The seed's own query still works.
    assert conn.execute("SELECT COUNT(*), SUM(error_count) FROM api_metrics").fetchone() == (2, 0)


def test_rollups_and_buckets_equal_values_computed_from_raw_rows(db_path: Path) -> None:
    """Per-minute rollups and histogram buckets match what the raw rows say, across batches."""
    instrument.configure(metrics_db=str(db_path), flush_interval=60)
    rng = random.Random(7)
    rec = runtime.recorder
    now = time.perf_counter()
    for _ in range(4):
        for _i in range(600):
            t0 = now - rng.uniform(0, 240)  # spread over several minutes
            ms = rng.lognormvariate(3, 1)
            status = rng.choice([200, 200, 201, 404, 500, "503 Service Unavailable"])
            exc = rng.choice([None, None, None, ValueError])
            rec.add(_http(t0, ms, route=rng.choice(["/a", "/b/{id}", None]),
                          method=rng.choice(["GET", "POST"]), status=status, exc=exc,
                          ttfb_ms=rng.choice([None, ms / 2])))
            rec.add(("call", t0, t0 + ms / 1000, rng.choice(["job.x", "job.y"]),
                     rng.choice([None, KeyError])))
        assert instrument.flush(10) is True
    conn = sqlite3.connect(db_path)

    expected: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, 0.0, 0.0, 0.0, 0, 0])
    buckets: Counter[tuple[Any, ...]] = Counter()
    for ts, name, method, status, ms, qb, rb, err, ttfb in conn.execute(
            "SELECT timestamp, endpoint, method, status_code, response_time_ms,"
            " request_size_bytes, response_size_bytes, error_count, ttfb_ms FROM api_metrics"):
        key = (_minute(ts), "http", name, method, status)
        e = expected[key]
        e[0] += 1
        e[1] += err
        e[2] += ms
        e[3] = max(e[3], ms)
        e[4] += ttfb or 0.0
        e[5] += qb
        e[6] += rb
        buckets[(*key, bucket_index(ms))] += 1
    for ts, kind, name, method, status, ms, exc in conn.execute(
            "SELECT timestamp, kind, name, method, status_code, duration_ms, exception"
            " FROM call_metrics"):
        key = (_minute(ts), kind, name, method, status)
        e = expected[key]
        e[0] += 1
        e[1] += 1 if exc is not None else 0
        e[2] += ms
        e[3] = max(e[3], ms)
        buckets[(*key, bucket_index(ms))] += 1
    assert sum(e[0] for e in expected.values()) == 4800
    assert len({k[0] for k in expected}) >= 4  # several minutes really were covered

    actual = {tuple(r[:5]): list(r[5:]) for r in conn.execute("SELECT * FROM metric_rollups")}
    assert set(actual) == set(expected)
    for key, e in expected.items():
        a = actual[key]
        assert a[:2] == e[:2], key
        assert math.isclose(a[2], e[2], rel_tol=1e-9), key
        assert a[3] == e[3], key
        assert math.isclose(a[4], e[4], rel_tol=1e-9, abs_tol=1e-9), key
        assert a[5:] == e[5:], key
    stored = Counter({tuple(r[:6]): r[6] for r in conn.execute(
        "SELECT * FROM metric_rollup_buckets")})
    assert stored == buckets

    # A percentile read from the stored buckets agrees with the raw rows within 5 %.
    raw = sorted(r[0] for r in conn.execute(
        "SELECT response_time_ms FROM api_metrics WHERE endpoint = '/a'"))
    hist = Counter()
    for bucket, count in conn.execute(
            "SELECT bucket, count FROM metric_rollup_buckets WHERE kind = 'http' AND name = '/a'"):
        hist[bucket] += count
    for q in (50, 95, 99):
        exact = raw[math.ceil(len(raw) * q / 100) - 1]
        assert abs(percentile(hist, q) - exact) / exact < 0.05


def test_default_backend_writes_calls_with_this_pid(db_path: Path) -> None:
    """With no backends given, the kit writes to INSTRUMENT_METRICS_DB with the process id."""

    @instrument.timed(name="default.store")
    def job() -> None:
        return None

    job()
    assert instrument.flush(5) is True
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT name, pid FROM call_metrics").fetchall() == [
        ("default.store", os.getpid())]


_WRITER = textwrap.dedent("""
    import os, sys, time
    import instrument
    from instrument.core.runtime import runtime

    db, go, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    instrument.configure(metrics_db=db, flush_interval=60)
    deadline = time.monotonic() + 30
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.005)
    for rnd in range(n // 100):
        for i in range(100):
            t0 = time.perf_counter()
            runtime.recorder.add(("http", t0, t0 + 0.002, 0.0, "/w", "GET", 200, 1, 2, None, False))
        if not instrument.flush(30):
            print(instrument.stats(), file=sys.stderr)
            sys.exit(4)
""")


def test_several_processes_write_the_same_file_and_every_row_arrives(tmp_path: Path,
                                                                     db_path: Path) -> None:
    """Three processes flushing into one file at once lose no row, rollup count or bucket."""
    go = tmp_path / "go"
    connect(str(db_path)).close()
    n, procs_n = 3000, 3
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db_path), str(go), str(n)],
                              stderr=subprocess.PIPE, text=True) for _ in range(procs_n)]
    go.touch()
    pids = set()
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        pids.add(p.pid)
    conn = sqlite3.connect(db_path)
    per_pid = dict(conn.execute("SELECT pid, COUNT(*) FROM api_metrics GROUP BY pid").fetchall())
    assert per_pid == {pid: n for pid in pids}
    assert conn.execute("SELECT SUM(count) FROM metric_rollups").fetchone()[0] == n * procs_n
    assert conn.execute("SELECT SUM(count) FROM metric_rollup_buckets").fetchone()[0] == n * procs_n
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_retention_deletes_old_rows_and_rollups_and_keeps_new_ones(db_path: Path) -> None:
    """apply_retention(now=...) removes everything older than the retention days, nothing newer."""
    backend = SQLiteBackend(str(db_path), retention_days=7)
    agg = Aggregator()
    backend.write(agg.aggregate([]))  # the first write's own sweep runs before old rows exist
    now_pc, now = time.perf_counter(), time.time()
    old_t, new_t = now_pc - 10 * 86400, now_pc - 86400
    old_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 10 * 86400))
    new_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 86400))
    backend.write(agg.aggregate([
        _http(old_t, 5.0, route="/old"), _http(new_t, 5.0, route="/new"),
        ("call", old_t, old_t + 0.001, "old.job", None),
        ("call", new_t, new_t + 0.001, "new.job", None),
    ]))
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.executemany("INSERT INTO system_metrics (timestamp, cpu_percent) VALUES (?, 1.0)",
                     [(old_iso,), (new_iso,)])

    def names() -> dict[str, list[Any]]:
        return {
            "api": [r[0] for r in conn.execute("SELECT endpoint FROM api_metrics")],
            "calls": [r[0] for r in conn.execute("SELECT name FROM call_metrics")],
            "system": [r[0][:19] for r in conn.execute("SELECT timestamp FROM system_metrics")],
            "rollups": sorted(r[0] for r in conn.execute("SELECT name FROM metric_rollups")),
            "buckets": sorted(r[0] for r in conn.execute(
                "SELECT name FROM metric_rollup_buckets")),
        }

    assert names()["rollups"] == ["/new", "/old", "new.job", "old.job"]
    removed = backend.apply_retention(now=now)
    assert removed >= 3 + 2 + 2  # raw rows in three tables, a rollup and a bucket per kind
    assert names() == {"api": ["/new"], "calls": ["new.job"], "system": [new_iso],
                       "rollups": ["/new", "new.job"], "buckets": ["/new", "new.job"]}
    assert backend.apply_retention(now=now) == 0
    backend.apply_retention(now=now + 8 * 86400)
    assert all(v == [] for v in names().values())
    backend.close()


def test_a_locked_database_is_retried_until_the_lock_is_released(db_path: Path) -> None:
    """While another connection holds BEGIN EXCLUSIVE writes fail; after release the data lands."""
    connect(str(db_path)).close()
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        instrument.configure(backends=[SQLiteBackend(str(db_path), timeout=0.1)],
                             flush_interval=60)
        t0 = time.perf_counter()
        for i in range(20):
            runtime.recorder.add(_http(t0 + i * 0.001, 3.0, route="/locked"))
        assert instrument.flush(0.5) is False
        (state,) = instrument.stats()["backends"]
        assert "locked" in state["last_error"]
        assert state["pending_batches"] == 1 and state["errors_total"] >= 1
    finally:
        locker.execute("COMMIT")
        locker.close()
    assert instrument.flush(10) is True
    (state,) = instrument.stats()["backends"]
    assert state["healthy"] is True and state["samples_written"] == 20
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT COUNT(*) FROM api_metrics WHERE endpoint = '/locked'"
                        ).fetchone()[0] == 20
