"""The storage contract on SQLite and a real PostgreSQL: same rows, tiers, totals and queries.

Each test gets an empty store: a fresh SQLite file, or a fresh schema in a
throwaway PostgreSQL cluster started once for this module (tests/pg_cluster.py).
Assertions read back through the SQLite-dialect SQL the kit's read side uses
(PostgreSQL through ``PgQueryConnection``), so they hold for both stores alike.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from instrument import queries
from instrument.backends.postgresql import PostgreSQLBackend
from instrument.backends.sqlite import SQLiteBackend
from instrument.core.aggregate import Aggregator
from instrument.core.batch import Batch, Origin
from instrument.core.histogram import bucket_index
from instrument.exporters.snapshot import PostgreSQLSource, SQLiteSource
from instrument.prometheus import InstrumentCollector
from instrument.storage.histblob import decode_hist
from instrument.storage.pg_read import PgQueryConnection
from instrument.storage.totals import read_totals
from tests.pg_cluster import PgCluster, pg_cluster

NOW = time.time()
MINUTE = int(NOW // 60) * 60 - 120  # a whole minute two minutes ago: no edge effects


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    with pg_cluster() as cluster:
        yield cluster


class Store:
    """A backend factory and a reader for one empty store."""

    def __init__(self, kind: str, target: str) -> None:
        self.kind = kind
        self.target = target  # file path or URL
        self.opened: list[Any] = []

    def backend(self, **kw: Any) -> Any:
        cls = SQLiteBackend if self.kind == "sqlite" else PostgreSQLBackend
        b = cls(self.target, **kw)
        self.opened.append(b)
        return b

    def conn(self) -> Any:
        if self.kind == "sqlite":
            c: Any = sqlite3.connect(self.target)
        else:
            c = PgQueryConnection(psycopg.connect(self.target, autocommit=True))
        self.opened.append(c)
        return c

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return list(self.conn().execute(sql, params).fetchall())

    def one(self, sql: str, *params: Any) -> Any:
        return self.rows(sql, *params)[0][0]

    def close(self) -> None:
        for o in self.opened:
            o.close()


def _new_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    if kind == "sqlite":
        return Store(kind, str(tmp_path / f"contract-{len(list(tmp_path.iterdir()))}.db"))
    cluster: PgCluster = request.getfixturevalue("pg")
    return Store(kind, cluster.new_schema())


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = _new_store(request.param, tmp_path, request)
    yield s
    s.close()


def http(wall: float, ms: float, route: str = "/items/{id}", method: str = "GET",
         status: int = 200, exc: type[BaseException] | None = None, qb: int = 100,
         rb: int = 2000) -> tuple[Any, ...]:
    """An http sample whose start maps to ``wall`` (epoch seconds) in the aggregator."""
    t0 = wall - (time.time() - time.perf_counter())
    return ("http", t0, t0 + ms / 1000, t0 + ms / 2000, route, method, status, qb, rb, exc, False)


def call(wall: float, ms: float, name: str = "jobs.run", exc: type | None = None
         ) -> tuple[Any, ...]:
    t0 = wall - (time.time() - time.perf_counter())
    return ("call", t0, t0 + ms / 1000, name, exc)


def batch_a() -> Batch:
    """Forty requests over two routes, statuses and an exception, plus calls, at MINUTE+30."""
    w = MINUTE + 30
    samples = [http(w, 1.3 + i, status=500 if i % 10 == 0 else 200) for i in range(30)]
    samples += [http(w, 50.0 + i, route="/users", method="POST", qb=4000,
                     exc=KeyError if i == 3 else None) for i in range(10)]
    samples += [call(w, 3.0, exc=ValueError if i == 0 else None) for i in range(5)]
    return Aggregator().aggregate(samples)


def batch_b() -> Batch:
    """Ten slower requests to the first route, in the same minute."""
    return Aggregator().aggregate([http(MINUTE + 40, 400.0 + 10 * i) for i in range(10)])


def test_raw_rows_round_trip(store: Store) -> None:
    """Every request and call becomes one raw row with the values the aggregator produced."""
    b = store.backend()
    batch = batch_a()
    b.write(batch)
    got = store.rows("SELECT timestamp, endpoint, method, status_code, error_count, exception,"
                     " client_disconnected, pid FROM api_metrics ORDER BY id")
    want = [(r[0], r[1], r[2], r[3], r[7], r[9], r[10], r[11]) for r in batch.requests]
    assert got == want
    assert store.one("SELECT count(*) FROM call_metrics WHERE exception = 'ValueError'") == 1
    assert store.one("SELECT count(*) FROM call_metrics") == 5


def test_rollups_add_up_across_writes_and_writers(store: Store) -> None:
    """Two writers adding to the same minute keep exact counts, sums, maxima and buckets."""
    one, two = store.backend(), store.backend()
    one.write(batch_a())
    two.write(batch_a())
    two.write(batch_b())
    rows = store.rows("SELECT name, method, sum(count), sum(errors), max(max_ms)"
                      " FROM metric_rollups WHERE kind = 'http' GROUP BY name, method"
                      " ORDER BY name")
    assert rows[0][:4] == ("/items/{id}", "GET", 70, 6)
    assert rows[0][4] == pytest.approx(490.0, rel=1e-3)
    assert rows[1][:4] == ("/users", "POST", 20, 2)
    assert store.one("SELECT sum(count) FROM metric_rollup_buckets WHERE kind = 'http'") == 90
    coarse = store.rows("SELECT period, sum(count) FROM metric_rollups_coarse WHERE kind = 'http'"
                        " GROUP BY period ORDER BY period")
    assert [c for _, c in coarse] == [90] * len(coarse) and coarse


def test_histogram_blobs_merge_to_the_exact_bucket_counts(store: Store) -> None:
    """Merged per-minute histograms equal the bucket counts of every request written."""
    b = store.backend()
    b.write(batch_b())
    b.write(batch_a())  # lower buckets than the stored blob
    b.write(Aggregator().aggregate([http(MINUTE + 50, 0.2) for _ in range(3)]))  # negative index
    blob = store.one("SELECT hist FROM metric_histograms WHERE period = 60 AND kind = 'http'"
                     " AND name = '/items/{id}'")
    lo, counts = decode_hist(bytes(blob))
    got = {lo + i: c for i, c in enumerate(counts) if c}
    want = Counter(bucket_index(1.3 + i) for i in range(30))
    want.update(bucket_index(400.0 + 10 * i) for i in range(10))
    want[bucket_index(0.2)] += 3
    assert min(want) < 0
    assert got == dict(want)


def test_system_app_and_log_rows_are_stored(store: Store) -> None:
    """System readings, application metrics and log lines land in their seed-shaped tables."""
    batch = Batch()
    batch.other["system"] = [("system", NOW - 5, {"cpu_percent": 12.5, "memory_percent": 40.0,
                                                  "pid": 42, "process_rss_mb": 80.0})]
    batch.other["app"] = [("app", NOW - 5, "queue_size", "gauge", 7.0, 42),
                          ("app", NOW - 4, "jobs_done", "counter", 3.0, 42)]
    batch.other["log"] = [("log", NOW - 5, 40, "ERROR", "app", "boom", None, None, "rid-1",
                           "/x", "GET")]
    store.backend().write(batch)
    assert store.rows("SELECT cpu_percent, memory_percent, pid, process_rss_mb"
                      " FROM system_metrics") == [(12.5, 40.0, 42, 80.0)]
    assert store.rows("SELECT name, kind, value FROM app_metrics ORDER BY name") == [
        ("jobs_done", "counter", 3.0), ("queue_size", "gauge", 7.0)]
    assert store.rows("SELECT level, logger, message, request_id FROM logs") == [
        ("ERROR", "app", "boom", "rid-1")]


def test_retention_expires_history_but_never_totals(store: Store) -> None:
    """Rows older than the retention period go; recent rows and every cumulative total stay."""
    b = store.backend(retention_days=1)
    old = NOW - 3 * 86400
    b.write(batch_a())  # the first write also sweeps: nothing old yet
    b.write(Aggregator().aggregate([http(old, 5.0, route="/old") for _ in range(4)]))
    assert store.one("SELECT count(*) FROM api_metrics WHERE endpoint = '/old'") == 4
    totals_before = store.rows("SELECT name, sum(count) FROM metric_totals GROUP BY name"
                               " ORDER BY name")
    assert b.apply_retention() > 0
    assert store.rows("SELECT DISTINCT endpoint FROM api_metrics ORDER BY endpoint") == [
        ("/items/{id}",), ("/users",)]
    for table in ("metric_rollups", "metric_rollup_buckets"):
        assert store.one(f"SELECT count(*) FROM {table} WHERE name = '/old'") == 0
    assert store.one("SELECT count(*) FROM metric_histograms WHERE name = '/old'") == 0
    assert store.one("SELECT count(*) FROM metric_rollups_coarse WHERE name = '/old'") == 0
    assert store.rows("SELECT name, sum(count) FROM metric_totals GROUP BY name"
                      " ORDER BY name") == totals_before
    assert ("/old", 4) in totals_before


def test_totals_add_every_writer_and_read_back_exactly(store: Store) -> None:
    """Cumulative totals are the sum over writers; exceptions by type and samples included."""
    one, two = store.backend(), store.backend()
    one.write(batch_a())
    two.write(batch_a())
    two.write(batch_b())
    conn = store.conn()
    raw = conn.conn if isinstance(conn, PgQueryConnection) else conn
    series, buckets, counters = read_totals(raw, None, "?" if store.kind == "sqlite" else "%s")
    per = {(k, n, m, s): int(c) for k, n, m, s, c, *_ in series}
    assert per[("http", "/items/{id}", "GET", 200)] == 64
    assert per[("http", "/items/{id}", "GET", 500)] == 6
    assert per[("http", "/users", "POST", 200)] == 20
    assert per[("call", "jobs.run", "", 0)] == 10
    durations = sum(int(c) for f, k, *_, c in buckets if f == "duration" and k == "http")
    assert durations == 90
    sizes = Counter({(f, n, int(b)): int(c) for f, k, n, m, b, c in buckets
                     if f == "request_size" and k == "http"})
    assert sizes[("request_size", "/users", 12)] == 20  # 4000 bytes: 2**11 < n <= 2**12
    by_metric = {(m, n, lbl): float(v) for m, k, n, meth, lbl, v in counters}
    assert by_metric[("exceptions", "/users", "KeyError")] == 2
    assert by_metric[("exceptions", "jobs.run", "ValueError")] == 2
    assert by_metric[("kit_samples", "", "")] == 2 * 45 + 10
    assert by_metric[("kit_last_flush", "", "")] == pytest.approx(time.time(), abs=60)


def test_a_failed_batch_leaves_nothing_and_its_retry_counts_once(store: Store) -> None:
    """A write that fails midway rolls back everything; retrying the same batch adds it once."""
    b = store.backend()
    batch = batch_a()
    batch.other["log"] = [("log", NOW)]  # malformed: fails after the rollups were written
    with pytest.raises(IndexError):
        b.write(batch)
    for table in ("api_metrics", "metric_rollups", "metric_histograms", "metric_totals",
                  "metric_total_counters"):
        assert store.one(f"SELECT count(*) FROM {table}") == 0, table
    del batch.other["log"]
    b.write(batch)
    assert store.one("SELECT sum(count) FROM metric_totals WHERE kind = 'http'") == 40
    assert store.one("SELECT value FROM metric_total_counters WHERE metric = 'kit_samples'") == 45


def test_cardinality_guard_holds_across_writers(store: Store) -> None:
    """New names beyond max_routes fold into __overflow__ even when they come from other writers."""
    one, two = store.backend(), store.backend()
    w = MINUTE + 30

    def batch(*routes: str) -> Batch:  # as a flusher with max_routes=3 stamps it
        b = Aggregator().aggregate([http(w, 1.0, route=r) for r in routes])
        b.origin = Origin(socket.gethostname(), 3, 1, 0, 0)
        return b

    one.write(batch("/a", "/b"))
    two.write(batch("/c", "/d", "/e", "/a"))
    one.write(batch("/f", "/b"))
    rows = dict(store.rows("SELECT name, sum(count) FROM metric_totals GROUP BY name"))
    assert rows == {"/a": 2, "/b": 2, "/c": 1, "__overflow__": 3}


def test_exposition_reads_the_same_totals_from_either_store(store: Store, tmp_path: Path) -> None:
    """The Prometheus collector reports the same samples whatever the store."""
    b = store.backend()
    b.write(batch_a())
    b.write(batch_b())
    source = (SQLiteSource(store.target) if store.kind == "sqlite"
              else PostgreSQLSource(store.target, host=socket.gethostname()))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in InstrumentCollector(source).collect() for s in fam.samples
               if not s.name.startswith("instrument_kit_last")}
    assert samples[("instrument_http_requests_total",
                    (("method", "GET"), ("route", "/items/{id}"), ("status", "200")))] == 37
    key = ("instrument_http_request_duration_seconds_bucket",
           (("le", "0.016"), ("method", "GET"), ("route", "/items/{id}")))
    assert samples[key] == sum(1 for i in range(30) if 1.3 + i < 16.0)
    assert samples[("instrument_function_exceptions_total",
                    (("exception", "ValueError"), ("function", "jobs.run")))] == 1
    assert samples[("instrument_kit_samples_total", ())] == 55


def test_queries_answer_the_same_from_sqlite_and_postgresql(tmp_path: Path,
                                                            pg: PgCluster) -> None:
    """Summaries, per-route stats, time series and app metrics agree across the two stores."""
    lite = Store("sqlite", str(tmp_path / "q.db"))
    post = Store("postgresql", pg.new_schema())
    extra = Batch()
    extra.other["system"] = [("system", NOW - 30, {"cpu_percent": 10.0, "memory_percent": 20.0,
                                                   "network_bytes_sent": 100})]
    extra.other["app"] = [("app", NOW - 30, "queue", "gauge", 1.0, 1),
                          ("app", NOW - 20, "queue", "gauge", 5.0, 1),
                          ("app", NOW - 20, "done", "counter", 2.0, 1)]
    for s in (lite, post):
        b = s.backend()
        for batch in (batch_a(), batch_b(), extra):
            b.write(batch)
    try:
        for fn in (lambda c: queries.api_stats(c, NOW - 3600, NOW),
                   lambda c: queries.api_stats(c, NOW - 3600, NOW, kind="call"),
                   lambda c: queries.system_stats(c, NOW - 3600, NOW),
                   lambda c: queries.timeseries(c, NOW - 3600, NOW),
                   lambda c: queries.app_metrics_latest(c, NOW - 3600),
                   lambda c: queries.app_metric_series(c, "queue", NOW - 3600)):
            a, p = fn(lite.conn()), fn(post.conn())
            assert _rounded(a) == _rounded(p)
        assert queries.api_stats(post.target, NOW - 3600, NOW)["api"]["request_count"] == 50
    finally:
        lite.close()
        post.close()


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def test_postgresql_has_every_sqlite_table_and_column(tmp_path: Path, pg: PgCluster) -> None:
    """The PostgreSQL schema mirrors SQLite's tables and columns, plus a host column on each."""
    lite = sqlite3.connect(tmp_path / "schema.db")
    from instrument.backends.sqlite import connect

    connect(str(tmp_path / "schema.db")).close()
    # Log search (FTS5 and the minute -> id ranges it narrows with) is SQLite's alone.
    search_only = ("logs_fts%", "logs_minutes", "sqlite_%")
    tables = [r[0] for r in lite.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        + "".join(" AND name NOT LIKE ?" for _ in search_only), search_only)]
    assert "metric_totals" in tables and "api_metrics" in tables
    url = pg.new_schema()
    PostgreSQLBackend(url).write(Batch())
    with psycopg.connect(url, autocommit=True) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()
        assert schema is not None
        for table in tables:
            want = {r[1] for r in lite.execute(f"PRAGMA table_info({table})")} | {"host"}
            got = {r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
                " AND table_name = %s", (schema[0], table))}
            assert got == want, table
