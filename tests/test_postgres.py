"""The PostgreSQL store under real conditions: chosen by INSTRUMENT_STORAGE, a fleet, a restart.

A throwaway cluster (tests/pg_cluster.py) runs for the module; each test
writes into its own schema. The storage contract itself (rows, tiers, totals,
retention, queries) is tests/backends/test_contract.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

import instrument
from instrument.backends.postgresql import PostgreSQLBackend
from instrument.core.aggregate import Aggregator
from instrument.core.runtime import runtime
from instrument.exporters.snapshot import PostgreSQLSource
from instrument.wsgi import InstrumentMiddleware
from tests.pg_cluster import PgCluster, pg_cluster
from tests.servers import wait_until, werkzeug_server


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    with pg_cluster() as cluster:
        yield cluster


def _count(url: str, sql: str) -> int:
    """The single number ``sql`` selects; 0 while the kit has not created its tables yet."""
    with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
        try:
            row = conn.execute(sql).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0] or 0) if row else 0


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def test_storage_url_selects_postgresql_for_the_default_backend(
        pg: PgCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """INSTRUMENT_STORAGE=postgresql://... makes the kit write there instead of SQLite."""
    url = pg.new_schema()
    monkeypatch.setenv("INSTRUMENT_STORAGE", url)
    monkeypatch.setenv("INSTRUMENT_INSTANCE", "web-1")
    instrument.configure()
    assert [type(b).__name__ for b in runtime.backends] == ["PostgreSQLBackend"]

    @instrument.timed(name="jobs.nightly")
    def job() -> int:
        return 1

    for _ in range(7):
        job()
    assert instrument.flush(10.0)
    assert _count(url, "SELECT count(*) FROM call_metrics WHERE name = 'jobs.nightly'"
                       " AND host = 'web-1'") == 7
    assert _count(url, "SELECT sum(count) FROM metric_totals WHERE kind = 'call'") == 7
    assert "s3cret" not in repr(PostgreSQLBackend("postgresql://app:s3cret@db:5432/metrics"))


def test_a_fleet_shares_one_database_and_each_host_exports_its_own(pg: PgCluster) -> None:
    """Rows carry their host; a host's exposition shows its totals, the fleet view adds all."""
    url = pg.new_schema()
    for host, n in (("web-a", 3), ("web-b", 5)):
        backend = PostgreSQLBackend(url, instance=host)
        t0 = time.perf_counter()  # wall clock now: nothing for retention to sweep
        backend.write(Aggregator().aggregate(
            [("http", t0, t0 + 0.01, 0.0, "/x", "GET", 200, 0, 2, None, False)] * n))
        backend.close()

    def total(host: str | None) -> float:
        snap = PostgreSQLSource(url, host=host).read()
        return sum(row[4] for row in snap.series)

    assert (total("web-a"), total("web-b"), total(None)) == (3, 5, 8)
    assert _count(url, "SELECT count(DISTINCT host) FROM api_metrics") == 2
    assert _count(url, "SELECT sum(count) FROM metric_rollups") == 8


def test_a_server_restart_mid_load_loses_no_buffered_request(pg: PgCluster) -> None:
    """Requests served while PostgreSQL restarts are kept, retried and all stored exactly once."""
    url = pg.new_schema()
    instrument.configure(storage=url, flush_interval=0.05)
    sent = [0]
    stop = threading.Event()
    errors: list[BaseException] = []
    with werkzeug_server(InstrumentMiddleware(_app)) as base:

        def client() -> None:
            try:
                with requests.Session() as s:
                    while not stop.is_set():
                        s.get(f"{base}/load", timeout=10).raise_for_status()
                        sent[0] += 1
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)

        thread = threading.Thread(target=client)
        thread.start()
        try:
            wait_until(lambda: _count(url, "SELECT count(*) FROM api_metrics") >= 50,
                       timeout=20, what="rows before the restart")
            pg.stop("fast")
            before = sent[0]
            state = runtime.flusher.states[0] if runtime.flusher else None
            assert state is not None
            wait_until(lambda: state.errors_total >= 2 and sent[0] >= before + 100,
                       timeout=20, what="failed flushes while the server is down")
            pg.start()
            during = sent[0]
            wait_until(lambda: sent[0] >= during + 100, timeout=20, what="load after restart")
        finally:
            stop.set()
            thread.join(20)
    assert not errors
    assert instrument.flush(30.0)
    backend = runtime.backends[0]
    assert backend.reconnects >= 1
    assert state.samples_lost == 0
    assert _count(url, "SELECT count(*) FROM api_metrics WHERE endpoint = '/load'") == sent[0]
    assert _count(url, "SELECT sum(count) FROM metric_totals WHERE kind = 'http'") == sent[0]
    assert _count(url, "SELECT sum(count) FROM metric_rollups WHERE kind = 'http'") == sent[0]


def test_postgres_benchmark_quick_mode(pg: PgCluster, tmp_path: Path) -> None:
    """benchmarks/postgres.py --quick writes into a given server and reports rows per second."""
    out = tmp_path / "bench.json"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "postgres.py"), "--quick",
                           "--url", pg.new_schema(), "--requests", "1000", "--batch", "500",
                           "--json", str(out)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    for store in ("postgresql", "sqlite"):
        assert data[store]["rows_per_s_1_writer"] > 0
        assert data[store]["rows_per_s_2_writers"] > 0


def test_concurrent_writers_on_the_same_rows_add_up_exactly(pg: PgCluster) -> None:
    """Workers upserting the same rollups, histograms and totals at once never lose an update."""
    from instrument.storage.histblob import decode_hist

    url = pg.new_schema()
    per_batch, batches, writers = 60, 15, 3
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        backend = PostgreSQLBackend(url, instance="web")
        agg = Aggregator()
        t0 = time.perf_counter()  # wall clock now: nothing for retention to sweep
        try:
            for b in range(batches):
                samples = [("http", t0, t0 + 0.001 * (1 + (i + b + n) % 40), 0.0,
                            f"/r{i % 6}", "GET", 200, 0, 10, None, False)
                           for i in range(per_batch)]
                backend.write(agg.aggregate(samples))
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)
        finally:
            backend.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures  # sorted lock order: no deadlock, no lost update
    expected = per_batch * batches * writers
    assert _count(url, "SELECT sum(count) FROM metric_rollups") == expected
    assert _count(url, "SELECT sum(count) FROM metric_totals") == expected
    assert _count(url, "SELECT sum(count) FROM metric_total_buckets"
                       " WHERE family = 'duration'") == expected
    with psycopg.connect(url, autocommit=True) as conn:
        blobs = conn.execute("SELECT hist FROM metric_histograms WHERE period = 60").fetchall()
    assert sum(sum(decode_hist(bytes(b))[1]) for (b,) in blobs) == expected
