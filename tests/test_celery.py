"""Celery tasks through a real worker on a real Redis: outcomes counted exactly, ids carried.

A Debian ``redis-server`` runs on a free loopback port with no persistence, and a
prefork worker (``celery -A tests.celery_app worker``, two children) runs in a
subprocess with its own SQLite store. The worker is stopped with SIGTERM, and the
rows are read after it exits: what the kit wrote at shutdown is all there is, so
the counts must match what ran exactly. The header helpers, the aggregation of
task samples and tasks run in-process (``apply``) are tested without a broker.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from celery import Celery
from flask import Flask

import instrument
from instrument import queries
from instrument.adapters.celery import (
    HEADER_PUBLISHED,
    HEADER_REQUEST_ID,
    HEADER_TRACEPARENT,
    HEADER_TRACESTATE,
    _context_from_headers,
    _due,
    _outgoing_headers,
)
from instrument.celery import instrument_celery
from instrument.core.aggregate import Aggregator
from instrument.core.buffer import KIND_TASK, KIND_TASK_WAIT, Recorder
from instrument.flask import Instrument
from instrument.logs import JsonFormatter, get_request_id, get_traceparent, request_context
from instrument.testing import MemoryBackend
from tests import celery_app as tasks
from tests.servers import HOST, query, wait_until, werkzeug_server

ROOT = Path(__file__).resolve().parent.parent
REDIS = "/usr/bin/redis-server"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TP = f"00-{TRACE}-00f067aa0ba902b7-01"


# -- the header helpers ---------------------------------------------------------------------
def test_outgoing_headers_outside_any_request_carry_only_the_publish_time() -> None:
    before = time.time()
    headers = _outgoing_headers()
    assert set(headers) == {HEADER_PUBLISHED}
    assert before <= headers[HEADER_PUBLISHED] <= time.time()


def test_outgoing_headers_carry_the_request_id_and_a_span_of_its_trace() -> None:
    with request_context("req-7", traceparent=TP, tracestate="vendor=1") as rid:
        into: dict[str, Any] = {"lang": "py"}
        headers = _outgoing_headers(into)
    assert headers is into and into["lang"] == "py"  # added to the message's own headers
    assert rid == "req-7" and headers[HEADER_REQUEST_ID] == "req-7"
    tp = headers[HEADER_TRACEPARENT]
    assert tp.startswith(f"00-{TRACE}-") and tp != TP  # the job's span, a child of the caller's
    assert headers[HEADER_TRACESTATE] == "vendor=1"


def test_headers_round_trip_into_the_context_a_task_enters() -> None:
    with request_context("req-8", traceparent=TP):
        sent = _outgoing_headers()
    rid, tp, state, published = _context_from_headers(sent)
    assert (rid, tp, state, published) == ("req-8", sent[HEADER_TRACEPARENT], None,
                                           sent[HEADER_PUBLISHED])
    with request_context(rid, traceparent=tp) as entered:
        assert entered == "req-8"
        assert (get_traceparent() or "").split("-")[1] == TRACE


@pytest.mark.parametrize("value", ["has space", "x" * 129, "caf\u00e9", 42, b"bytes", ""])
def test_a_request_id_off_the_wire_that_is_not_a_valid_id_is_dropped(value: Any) -> None:
    assert _context_from_headers({HEADER_REQUEST_ID: value})[0] is None


@pytest.mark.parametrize(("value", "expected"), [(1.5, 1.5), (2, 2.0), ("3", None),
                                                 (True, None), (None, None)])
def test_the_publish_time_must_be_a_number(value: Any, expected: float | None) -> None:
    assert _context_from_headers({HEADER_PUBLISHED: value})[3] == expected


def test_missing_headers_read_as_nothing_and_non_strings_are_ignored() -> None:
    assert _context_from_headers({}) == (None, None, None, None)
    assert _context_from_headers({HEADER_TRACEPARENT: 7, HEADER_TRACESTATE: ["a"]}) == (
        None, None, None, None)


def test_an_eta_is_read_as_epoch_seconds() -> None:
    assert _due("2026-01-02T03:04:05.500000+00:00") == 1767323045.5
    assert _due("not a date") is None and _due(None) is None


# -- aggregation of task samples ----------------------------------------------------------------
def test_task_samples_become_call_rows_with_their_outcome_and_a_wait_row() -> None:
    rec = Recorder(64)
    rec.add_flat((KIND_TASK, 10.0, 10.25, "jobs.a", "success", None, 0.5))
    rec.add_flat((KIND_TASK, 11.0, 11.5, "jobs.a", "failure", ValueError, None))
    rec.add_flat((KIND_TASK, 12.0, 12.0, "jobs.a", "retry", ConnectionError, 0.0))
    samples = rec.drain(10)
    assert [len(s) for s in samples] == [7, 7, 7]  # stored flat, read back whole
    batch = Aggregator().aggregate(samples)
    rows = [(r[1], r[2], r[3], round(r[5], 3), r[6]) for r in batch.calls]
    assert rows == [("task", "jobs.a", "success", 250.0, None),
                    ("task_wait", "jobs.a", "", 500.0, None),
                    ("task", "jobs.a", "failure", 500.0, "ValueError"),
                    ("task", "jobs.a", "retry", 0.0, "ConnectionError"),
                    ("task_wait", "jobs.a", "", 0.0, None)]
    counts = {(k[1], k[3]): (v[0], v[1]) for k, v in batch.rollups.items()}
    # only a failure is an error; a retry keeps its reason but is not one
    assert counts == {("task", "success"): (1, 0), ("task", "failure"): (1, 1),
                      ("task", "retry"): (1, 0), (KIND_TASK_WAIT, ""): (2, 0)}
    assert batch.exceptions == {("task", "jobs.a", "failure", "ValueError"): 1,
                                ("task", "jobs.a", "retry", "ConnectionError"): 1}
    assert batch.samples == 3


# -- tasks run in-process -------------------------------------------------------------------------
def _task_rows(memory: MemoryBackend) -> list[tuple[str, str, str, str | None]]:
    assert instrument.flush(5.0) is True
    return sorted((r["kind"], r["name"], r["method"], r["exception"]) for r in memory.calls
                  if r["kind"] in (KIND_TASK, KIND_TASK_WAIT))


def test_a_task_applied_in_process_is_recorded_and_continues_the_caller(
        memory: MemoryBackend) -> None:
    local = Celery("eager", broker="memory://")  # no result store, no broker ever used

    @local.task(name="eager.rid")
    def rid() -> str | None:
        return get_request_id()

    @local.task(name="eager.boom")
    def boom() -> None:
        raise KeyError("x")

    instrument_celery(local)  # a second call (tests.celery_app made one): connects nothing new
    with request_context("caller-1"):
        assert rid.apply().get() == "caller-1"
    assert rid.apply().get() not in (None, "caller-1")  # a fresh id of its own
    assert boom.apply().failed()
    assert get_request_id() is None  # the task's context was left
    assert _task_rows(memory) == [("task", "eager.boom", "failure", "KeyError"),
                                  ("task", "eager.rid", "success", None),
                                  ("task", "eager.rid", "success", None)]  # never queued: no wait


# -- a real broker and a real worker ------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on 127.0.0.1: no RDB, no AOF, its files in a temp dir."""
    wait_until(lambda: os.path.exists(REDIS), timeout=600, interval=5,
               what="redis-server (make system-deps)")
    directory = tmp_path_factory.mktemp("redis")
    port = _free_port()
    proc = subprocess.Popen([REDIS, "--bind", HOST, "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(directory),
                             "--daemonize", "no", "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _ping(port) or proc.poll() is not None, what="redis-server")
        assert proc.poll() is None, "redis-server exited at start-up"
        url = f"redis://{HOST}:{port}/0"
        tasks.app.conf.update(broker_url=url, result_backend=url)
        yield url
    finally:
        tasks.app.close()
        proc.terminate()
        proc.wait(10)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    db: Path
    log: Path
    out: Path

    def stop(self) -> int:
        """SIGTERM (a warm shutdown: the children finish, then the kit flushes)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


def worker_env(**extra: str) -> dict[str, str]:
    # DJANGO_SETTINGS_MODULE: set in this process once the Django tests are collected; a
    # worker that inherits it turns on Celery's Django fixup and fails to import the site.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("INSTRUMENT_") and k != "DJANGO_SETTINGS_MODULE"}
    return env | {"PYTHONUNBUFFERED": "1"} | extra


@contextmanager
def running_worker(tmp_path: Path, broker: str, app: str = "tests.celery_app",
                   cwd: Path = ROOT, pool: str = "prefork", **env: str) -> Iterator[Worker]:
    """A worker (prefork: two children) with its own store; yields once it is ready."""
    client = redis.Redis.from_url(broker)
    client.flushall()  # nothing left from another test
    client.close()
    db, log, out = tmp_path / "worker.db", tmp_path / "worker.log", tmp_path / "worker.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, "worker", f"--pool={pool}",
             "--concurrency=2", "--without-heartbeat", "--without-gossip", "--without-mingle",
             "-n", f"kit-{uuid.uuid4().hex[:8]}@%h"], cwd=cwd, stdout=sink,
            stderr=subprocess.STDOUT,
            env=worker_env(INSTRUMENT_METRICS_DB=str(db), KIT_CELERY_BROKER=broker,
                           CELERY_BROKER_URL=broker, KIT_CELERY_LOG=str(log), **env))
    w = Worker(proc, db, log, out)
    try:
        wait_until(lambda: " ready." in _text(w.log) + _text(w.out) or w.proc.poll() is not None,
                   timeout=60, what="the celery worker")
        # Only the tail: a runner that shortens long messages still shows the exception.
        assert w.proc.poll() is None, "\n".join(_text(w.out).splitlines()[-12:])
        yield w
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_the_worker_records_each_outcome_exactly(redis_url: str, tmp_path: Path) -> None:
    with running_worker(tmp_path, redis_url) as worker:
        results = [tasks.ok.delay(i) for i in range(3)]
        results.append(tasks.ok.apply_async((9,), countdown=2))
        results += [tasks.boom.delay(), tasks.flaky.delay(2), tasks.doomed.delay()]
        revoked = str(uuid.uuid4())
        replies = tasks.app.control.revoke(revoked, reply=True, timeout=10)
        assert len(replies) == 1  # the worker knows before the message exists
        tasks.ok.apply_async((1,), task_id=revoked)
        values = [r.get(timeout=30, propagate=False) for r in results]
        assert values[:4] == [0, 2, 4, 18] and values[5] == 2
        assert [r.state for r in results[4:]] == ["FAILURE", "SUCCESS", "FAILURE"]
        wait_until(lambda: tasks.app.AsyncResult(revoked).state == "REVOKED", timeout=30,
                   what="the revoked task")
        assert worker.stop() == 0
    runs = query(worker.db, "SELECT name, method, exception, count(*) FROM call_metrics"
                            " WHERE kind = 'task' GROUP BY 1, 2, 3 ORDER BY 1, 2")
    assert runs == [("kit.boom", "failure", "ValueError", 1),
                    ("kit.doomed", "failure", "ConnectionError", 1),
                    ("kit.doomed", "retry", "ConnectionError", 1),
                    ("kit.flaky", "retry", "ConnectionError", 2),
                    ("kit.flaky", "success", None, 1),
                    ("kit.ok", "revoked", None, 1),
                    ("kit.ok", "success", None, 4)]
    rollups = query(worker.db, "SELECT name, method, sum(count), sum(errors) FROM metric_rollups"
                               " WHERE kind = 'task' GROUP BY 1, 2 ORDER BY 1, 2")
    assert [(n, m, c) for n, m, c, _ in rollups] == [(n, m, c) for n, m, _, c in runs]
    assert [e for *_, e in rollups] == [1, 1, 0, 0, 0, 0, 0]  # failures are the errors
    # every run that came off the queue waited, a revoked one never started
    waits = query(worker.db, "SELECT name, count(*), min(duration_ms), max(duration_ms)"
                             " FROM call_metrics WHERE kind = 'task_wait' GROUP BY 1 ORDER BY 1")
    assert [(n, c) for n, c, *_ in waits] == [("kit.boom", 1), ("kit.doomed", 2),
                                              ("kit.flaky", 3), ("kit.ok", 4)]
    assert all(0 <= lo <= hi < 10_000 for *_, lo, hi in waits)
    # the countdown task's two seconds are not queue wait: it is counted from its ETA
    assert waits[-1][3] < 1500
    # the summaries read tasks like any other kind: runs per outcome, failures as errors
    runs_summary = queries.summary(worker.db, hours=1, kind="task")
    assert (runs_summary["api"]["request_count"], runs_summary["api"]["error_count"]) == (11, 2)
    assert queries.summary(worker.db, hours=1, kind="task_wait")["api"]["request_count"] == 10
    pids = query(worker.db, "SELECT method, count(DISTINCT pid) FROM call_metrics"
                            " WHERE kind = 'task' AND name = 'kit.ok' GROUP BY 1")
    assert dict(pids)["revoked"] == 1
    # what the dashboard's tasks card reads: runs by outcome, and each task's queue wait
    from tests.dashboard_fixtures import TOKEN, running_server
    with running_server(worker.db) as (srv, _):
        root = srv.url[: -len("/monitoring")] + "/api/v1/monitoring/routes"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        card = {kind: requests.get(root, params={"kind": kind, "hours": 1}, headers=auth,
                                   timeout=10).json()["routes"] for kind in ("task", "task_wait")}
    assert sorted((r["route"], r["method"], r["requests"]) for r in card["task"]) == [
        (n, m, c) for n, m, _, c in runs]
    assert sorted((r["route"], r["requests"]) for r in card["task_wait"]) == [
        (n, c) for n, c, *_ in waits]
    assert all(r["p95_ms"] is not None and r["p95_ms"] >= 0 for r in card["task_wait"])


def test_tasks_the_worker_stops_count_once_from_its_main_process(redis_url: str,
                                                                 tmp_path: Path) -> None:
    """Killed at a hard time limit, or revoked with terminate=True while running.

    Neither run reaches task_postrun in its child: the main process's task_failure
    (sent twice by Celery 5.7 for a hard limit) and task_revoked are what count them.
    """
    with running_worker(tmp_path, redis_url) as worker:
        stuck = tasks.stuck.delay()
        assert isinstance(stuck.get(timeout=30, propagate=False), Exception)
        assert stuck.state == "FAILURE"
        sleepy = tasks.sleepy.delay()
        wait_until(lambda: any(r.get("message") == "sleeping" for r in worker.lines()),
                   timeout=30, what="the sleepy task to start")
        tasks.app.control.revoke(sleepy.id, terminate=True)
        wait_until(lambda: sleepy.state == "REVOKED", timeout=30, what="the terminated task")
        assert tasks.ok.delay(4).get(timeout=30) == 8  # the pool carries on
        assert worker.stop() == 0
    runs = query(worker.db, "SELECT name, method, exception, duration_ms FROM call_metrics"
                            " WHERE kind = 'task' ORDER BY name")
    assert runs == [("kit.ok", "success", None, runs[0][3]),
                    ("kit.sleepy", "revoked", None, 0.0),
                    ("kit.stuck", "failure", "TimeLimitExceeded", 0.0)]


@pytest.fixture
def view_log() -> Iterator[io.StringIO]:
    """The enqueuing process's JSON log lines, from the logger the view logs to."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("kit_tests.view")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield stream
    logger.removeHandler(handler)


def test_the_request_id_crosses_from_a_flask_view_into_the_worker_logs(
        redis_url: str, tmp_path: Path, view_log: io.StringIO) -> None:
    web = Flask(__name__)
    Instrument(web)
    log = logging.getLogger("kit_tests.view")

    @web.get("/enqueue/<tag>")
    def enqueue(tag: str) -> dict[str, str]:
        log.info("enqueueing", extra={"tag": tag})
        return {"task": tasks.logged.delay(tag).id}

    with running_worker(tmp_path, redis_url) as worker, werkzeug_server(web) as base:
        given = requests.get(f"{base}/enqueue/given", timeout=10,
                             headers={"X-Request-ID": "client-req-1", "traceparent": TP})
        minted = requests.get(f"{base}/enqueue/minted", timeout=10)
        assert given.status_code == minted.status_code == 200
        ids = {"given": "client-req-1", "minted": minted.headers["X-Request-ID"]}
        assert given.headers["X-Request-ID"] == "client-req-1" and ids["minted"] != ids["given"]
        for response, tag in ((given, "given"), (minted, "minted")):
            assert tasks.app.AsyncResult(response.json()["task"]).get(timeout=30) == ids[tag]
        assert worker.stop() == 0
    views = {r["tag"]: r for r in map(json.loads, view_log.getvalue().splitlines())}
    ran = {r["tag"]: r for r in worker.lines() if r.get("message") == "task ran"}
    assert set(views) == set(ran) == {"given", "minted"}
    assert views["given"]["trace_id"] == TRACE
    for tag in ("given", "minted"):
        view, task = views[tag], ran[tag]
        assert view["request_id"] == task["request_id"] == ids[tag]
        assert view["trace_id"] == task["trace_id"]  # one trace ...
        assert view["span_id"] != task["span_id"]  # ... and the task is a span of its own
        assert (task["method"], task["route"]) == ("TASK", "kit.logged")
        assert (view["method"], view["route"]) == ("GET", "/enqueue/<tag>")
    # Celery's own line for the run carries the id too
    done = [r for r in worker.lines() if "kit.logged" in r["message"]
            and "succeeded" in r["message"]]
    assert sorted(r["request_id"] for r in done) == sorted(ids.values())
    assert query(worker.db, "SELECT method, count(*) FROM call_metrics WHERE kind = 'task'"
                            " AND name = 'kit.logged' GROUP BY 1") == [("success", 2)]


def test_the_celery_example_runs_against_redis(redis_url: str, tmp_path: Path) -> None:
    examples = ROOT / "examples"
    with running_worker(tmp_path, redis_url, app="celery_tasks", cwd=examples,
                        pool="solo") as worker:  # as its docstring runs it
        done = subprocess.run([sys.executable, str(examples / "celery_tasks.py")], cwd=tmp_path,
                              env=worker_env(CELERY_BROKER_URL=redis_url,
                                             INSTRUMENT_METRICS_DB=str(tmp_path / "client.db")),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["done"] == 9 and summary["failed"] == 1 and summary["mailed"] == 1
        assert worker.stop() == 0
    runs = query(worker.db, "SELECT name, method, count(*) FROM call_metrics WHERE kind = 'task'"
                            " GROUP BY 1, 2 ORDER BY 1, 2")
    assert runs == [("images.resize", "failure", 1), ("images.resize", "success", 9),
                    ("mail.send", "retry", 1), ("mail.send", "success", 1)]
    # the worker's JSON lines (on its stderr) name the request that enqueued the batch
    lines = [json.loads(line) for line in _text(worker.out).splitlines() if line.startswith("{")]
    resized = [r for r in lines if r.get("message") == "resized"]
    assert len(resized) == 9
    assert {r["request_id"] for r in resized} == {summary["request_id"]}


# -- queue lengths --------------------------------------------------------------------------
def test_queue_lengths_are_read_from_redis_and_stored_as_gauges(
        redis_url: str, db_path: Path) -> None:
    """Messages waiting on a real redis-server (no worker takes them), on the default queue
    with and without a priority and on a routed queue, read by the collector's cycle into
    ``app_metrics``; a queue nobody published to is 0; after the broker empties, so is the
    gauge (one connection, reused)."""
    from instrument.celery import watch_queues
    from instrument.metrics_collector import get_metrics_collector, reset_metrics_collector

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    instrument.configure(metrics_db=str(db_path), flush_interval=0.2)
    reset_metrics_collector()
    try:
        for i in range(5):
            tasks.ok.delay(i)
        tasks.ok.apply_async((9,), priority=6)  # kombu keeps it in another list of the queue
        for i in range(3):
            tasks.ok.apply_async((i,), queue="reports")
        assert list(watch_queues(tasks.app)) == ["celery_queue_length.kit_tests"]  # the default
        readers = watch_queues(tasks.app, ["kit_tests", "reports", "idle"])
        assert sorted(readers) == ["celery_queue_length.idle", "celery_queue_length.kit_tests",
                                   "celery_queue_length.reports"]
        assert "redis://" not in repr(readers)
        collector = get_metrics_collector()
        collector.collect_once()
        assert {k: v for k, v in collector.get_app_metrics().items()
                if k.startswith("celery_")} == {"celery_queue_length.kit_tests": 6.0,
                                               "celery_queue_length.reports": 3.0,
                                               "celery_queue_length.idle": 0.0}
        assert readers["celery_queue_length.idle"]._conn is not None  # kept: no reconnects
        client.flushall()
        collector.collect_once()
        assert collector.get_app_metrics()["celery_queue_length.kit_tests"] == 0.0
        instrument.flush()
        stored = query(db_path, "SELECT value FROM app_metrics WHERE name = ? AND kind = 'gauge'"
                                " ORDER BY id", "celery_queue_length.kit_tests")
        assert [v for (v,) in stored] == [6.0, 0.0]
        for reader in readers.values():
            reader.close()
    finally:
        reset_metrics_collector()
        client.close()


def test_a_broker_that_is_down_raises_and_drops_its_connection() -> None:
    """No broker on the port: the read fails (the collector logs it once and goes on), with
    no password in the error's text; nothing is left half-open."""
    from celery import Celery

    from instrument.adapters.celery_queues import QueueLength

    app = Celery("down", broker=f"redis://:s3cret@{HOST}:{_free_port()}/0")
    app.conf.broker_connection_timeout = 1
    app.conf.broker_connection_retry = False
    reader = QueueLength(app, "celery")
    with pytest.raises(Exception) as failed:
        reader()
    assert "s3cret" not in str(failed.value) and "s3cret" not in repr(reader)
    assert reader._conn is None
    app.close()
