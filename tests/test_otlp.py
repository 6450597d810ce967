"""The OTLP/HTTP metrics exporter against a real receiver that decodes every export with
opentelemetry-proto: the OTLP rules, both temporalities, retries through the flusher,
start-up checks, and exact totals from a real app under gunicorn with two workers."""

from __future__ import annotations

import contextlib
import itertools
import logging
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, request
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2

import instrument
from instrument.config import ConfigError, Settings
from instrument.core.runtime import runtime
from instrument.flask import Instrument
from instrument.storage.otlp import DURATION_BOUNDS, SIZE_BOUNDS, OTLPBackend
from instrument.testing import MemoryBackend
from tests.servers import HOST, gunicorn_server, query, wait_until, werkzeug_server

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
SECRET = "Bearer s3cret-t0ken"


# -- the receiver ----------------------------------------------------------------
class Receiver:
    """An OTLP/HTTP metrics receiver on 127.0.0.1: answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.accepted: list[ExportMetricsServiceRequest] = []
        self.answers: list[int] = []
        self.headers: list[dict[str, str]] = []
        self.problems: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.answers.append(status)
                    if self.path != "/v1/metrics":
                        receiver.problems.append(f"path {self.path}")
                    if self.headers.get("Content-Type") != "application/x-protobuf":
                        receiver.problems.append(f"content type {self.headers['Content-Type']}")
                    message = ExportMetricsServiceRequest()
                    try:
                        message.ParseFromString(body)
                    except Exception as exc:
                        receiver.problems.append(f"undecodable body: {exc}")
                    if status == 200:
                        receiver.accepted.append(message)
                reply = ExportMetricsServiceResponse().SerializeToString() if status == 200 \
                    else b"receiver down"
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}/v1/metrics"

    def exports(self) -> list[ExportMetricsServiceRequest]:
        with self.lock:
            return list(self.accepted)


@contextlib.contextmanager
def receiver(statuses: list[int] | None = None) -> Iterator[Receiver]:
    r = Receiver(statuses)
    thread = threading.Thread(target=r.server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True, name="otlp-receiver")
    thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()
        thread.join(5)
    assert not r.problems, r.problems


# -- reading exports -------------------------------------------------------------
def attrs(kvs: Any) -> dict[str, Any]:
    out = {}
    for kv in kvs:
        field = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, field)
    return out


def metrics_of(message: ExportMetricsServiceRequest) -> dict[str, metrics_pb2.Metric]:
    [rm] = message.resource_metrics
    [sm] = rm.scope_metrics
    names = [m.name for m in sm.metrics]
    assert len(names) == len(set(names)), f"a metric appears twice: {names}"
    return {m.name: m for m in sm.metrics}


def resource_of(message: ExportMetricsServiceRequest) -> dict[str, Any]:
    [rm] = message.resource_metrics
    return attrs(rm.resource.attributes)


def check_rules(message: ExportMetricsServiceRequest, temporality: int) -> None:
    """The OTLP rules every export must follow, whatever it holds."""
    resource = resource_of(message)
    for key in ("service.name", "service.instance.id", "host.name"):
        assert resource.get(key), f"resource lacks {key}: {resource}"
    units = {"http.server.request.duration": "s", "http.server.request.body.size": "By",
             "http.server.response.body.size": "By", "http.server.active_requests": "{request}",
             "instrument.function.duration": "s"}
    for name, metric in metrics_of(message).items():
        if name in units:
            assert metric.unit == units[name], (name, metric.unit)
        kind = metric.WhichOneof("data")
        if kind == "histogram":
            assert metric.histogram.aggregation_temporality == temporality
            for p in metric.histogram.data_points:
                assert list(p.explicit_bounds) == sorted(p.explicit_bounds)
                assert len(p.bucket_counts) == len(p.explicit_bounds) + 1
                assert sum(p.bucket_counts) == p.count, (name, list(p.bucket_counts), p.count)
                assert p.start_time_unix_nano <= p.time_unix_nano
                if p.count and p.HasField("max"):
                    assert p.max * p.count >= p.sum - 1e-9
        elif kind == "sum":
            assert metric.sum.aggregation_temporality == temporality
            if name == "http.server.active_requests":
                assert not metric.sum.is_monotonic
        else:
            assert kind == "gauge", (name, kind)


def http_counts(message: ExportMetricsServiceRequest) -> Counter[tuple[str, str, int]]:
    """Requests per (route, method, status) in one export's duration histogram."""
    out: Counter[tuple[str, str, int]] = Counter()
    metric = metrics_of(message).get("http.server.request.duration")
    for p in metric.histogram.data_points if metric is not None else ():
        a = attrs(p.attributes)
        out[(a.get("http.route", ""), a["http.request.method"],
             a.get("http.response.status_code", 0))] += p.count
    return out


def points(message: ExportMetricsServiceRequest, name: str) -> dict[tuple[Any, ...], Any]:
    metric = metrics_of(message)[name]
    data = getattr(metric, metric.WhichOneof("data")).data_points
    return {tuple(sorted(attrs(p.attributes).items())): p for p in data}


# -- the app ---------------------------------------------------------------------
@instrument.timed(name="shop.price")
def price(n: int) -> int:
    return n * 3


def make_app() -> Flask:
    app = Flask("otlp_under_test")

    @app.get("/items/<int:item_id>")
    def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id, "price": price(item_id)}

    @app.post("/items")
    def add_item() -> tuple[dict[str, int], int]:
        return {"size": len(request.get_data())}, 201

    @app.get("/boom")
    def boom() -> str:
        raise LookupError("view failed")

    Instrument(app)
    return app


LOAD = {("/items/<int:item_id>", "GET", 200): 6, ("/items", "POST", 201): 3,
        ("/boom", "GET", 500): 2}


def drive(url: str, rounds: int = 1) -> Counter[tuple[str, str, int]]:
    sent: Counter[tuple[str, str, int]] = Counter()
    with requests.Session() as s:
        for _ in range(rounds):
            for i in range(LOAD[("/items/<int:item_id>", "GET", 200)]):
                assert s.get(f"{url}/items/{i}", timeout=10).status_code == 200
            for _ in range(LOAD[("/items", "POST", 201)]):
                assert s.post(f"{url}/items", data=b"x" * 300, timeout=10).status_code == 201
            for _ in range(LOAD[("/boom", "GET", 500)]):
                assert s.get(f"{url}/boom", timeout=10).status_code == 500
            sent.update(LOAD)
    return sent


def configure(r: Receiver, memory: MemoryBackend | None = None, **options: Any) -> None:
    instrument.configure(backends=[memory or MemoryBackend()], flush_interval=0.05,
                         otlp_endpoint=r.url, otlp_interval=0.2, service_name="shop",
                         **options)


def holding(r: Receiver, expected: Counter[tuple[str, str, int]], after: int = 0,
            timeout: float = 15.0) -> list[ExportMetricsServiceRequest]:
    """Accepted exports once one past index ``after`` holds ``expected`` (cumulative)."""
    def ready() -> list[ExportMetricsServiceRequest]:
        got = r.exports()
        return got if any(http_counts(m) == expected for m in got[after:]) else []
    return wait_until(ready, timeout=timeout, interval=0.02, what=f"an export of {expected}")


# -- tests -----------------------------------------------------------------------
def test_cumulative_exports_follow_the_otlp_rules() -> None:
    """Resource, names, units, buckets; totals monotonic with fixed start times; on a timer."""
    with receiver() as r, werkzeug_server(make_app()) as url:
        configure(r)
        sent = drive(url)
        first = holding(r, sent)
        n = len(first)
        # no more traffic: the exporter's own timer keeps exporting the same totals
        wait_until(lambda: len(r.exports()) >= n + 2, what="timer-driven exports")
        sent += drive(url)
        exports = holding(r, sent, after=n)
    for message in exports:
        check_rules(message, CUMULATIVE)
    resource = resource_of(exports[-1])
    assert resource["service.name"] == "shop"
    assert len({resource_of(m)["service.instance.id"] for m in exports}) == 1
    assert {m.scope_metrics[0].scope.name for m in exports[-1].resource_metrics} == {"instrument"}

    early = next(m for m in exports if http_counts(m) == Counter(LOAD))
    late = exports[-1]
    assert http_counts(late) == Counter({k: 2 * v for k, v in LOAD.items()})
    # running totals: every series of the early export is in the late one, not smaller,
    # with the same start time
    for name in ("http.server.request.duration", "http.server.request.body.size",
                 "instrument.function.duration", "instrument.exceptions"):
        before, after = points(early, name), points(late, name)
        assert set(before) <= set(after), name
        for key, p in before.items():
            q = after[key]
            assert q.start_time_unix_nano == p.start_time_unix_nano, (name, key)
            assert q.time_unix_nano > p.time_unix_nano
            value = "count" if name != "instrument.exceptions" else "as_int"
            assert getattr(q, value) == 2 * getattr(p, value), (name, key)
    durations = points(late, "http.server.request.duration")
    boom = next(p for k, p in durations.items() if ("http.route", "/boom") in k)
    assert attrs(boom.attributes)["error.type"] == "500"
    ok = next(p for k, p in durations.items() if ("http.route", "/items") in k)
    assert "error.type" not in attrs(ok.attributes)
    assert list(ok.explicit_bounds) == list(DURATION_BOUNDS)
    assert ok.sum > 0
    bodies = points(late, "http.server.request.body.size")
    post = bodies[(("http.request.method", "POST"), ("http.route", "/items"))]
    assert post.count == 6 and post.sum == 6 * 300
    assert list(post.explicit_bounds) == list(SIZE_BOUNDS)
    assert post.bucket_counts[SIZE_BOUNDS.index(1024.0)] == 6  # 256 < 300 <= 1024
    calls = points(late, "instrument.function.duration")
    assert calls[(("code.function.name", "shop.price"),)].count == 12
    excs = points(late, "instrument.exceptions")
    assert sum(p.as_int for k, p in excs.items() if ("exception.type", "LookupError") in k) == 4
    active = metrics_of(late)["http.server.active_requests"]
    assert [p.as_int for p in active.sum.data_points] == [0]


def test_delta_exports_add_up_to_the_load() -> None:
    """Delta temporality: each export holds what came since the previous one, nothing twice."""
    with receiver() as r, werkzeug_server(make_app()) as url:
        configure(r, otlp_temporality="delta")
        sent = drive(url, rounds=2)

        def total() -> Counter[tuple[str, str, int]]:
            out: Counter[tuple[str, str, int]] = Counter()
            for m in r.exports():
                out.update(http_counts(m))
            return out

        wait_until(lambda: total() == sent, timeout=15, what="deltas adding up to the load")
        time.sleep(0.5)  # the last changes (the in-flight reading) go out
        settled = len(r.exports())
        time.sleep(0.8)  # idle: a delta exporter has nothing new, and sends nothing
        exports = r.exports()
    assert len(exports) == settled
    assert total() == sent
    spans = set()
    for message in exports:
        check_rules(message, DELTA)
        duration = metrics_of(message).get("http.server.request.duration")
        for p in duration.histogram.data_points if duration is not None else ():
            spans.add((p.start_time_unix_nano, p.time_unix_nano))
    assert len(spans) >= 1
    ordered = sorted(spans)
    for (_, end), (start, _) in itertools.pairwise(ordered):
        assert start >= end - 10**6  # windows follow each other (1 ms of clock slack)


def test_receiver_down_then_up_loses_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """500, 500, then 200: retried with backoff by the flusher, health failing then ok."""
    caplog.set_level(logging.DEBUG, logger="instrument")
    memory = MemoryBackend()
    with receiver(statuses=[500, 500]) as r, werkzeug_server(make_app()) as url:
        configure(r, memory, otlp_headers=f"authorization={SECRET.replace(' ', '%20')},x-t=1")
        sent = drive(url)

        def otlp_health() -> dict[str, Any]:
            return next(b for b in runtime.stats()["backends"] if b["name"] == "otlp")

        failing = wait_until(lambda: (h := otlp_health())["consecutive_failures"] and h,
                             what="the otlp backend failing")
        assert failing["healthy"] is False and "HTTP 500" in failing["last_error"]
        memory_health = next(b for b in runtime.stats()["backends"] if b["name"] == "memory")
        assert memory_health["healthy"] and memory_health["pending_batches"] == 0
        holding(r, sent, timeout=20)
        healthy = wait_until(lambda: (h := otlp_health())["healthy"] and h, what="health ok")
        assert healthy["errors_total"] >= 2 and healthy["last_success_at"]
        backend = next(b for b in runtime.backends if isinstance(b, OTLPBackend))
        text = repr(backend) + repr(runtime.settings) + repr(runtime.stats())
    assert r.answers[:3] == [500, 500, 200]
    assert all(h.get("authorization") == SECRET and h.get("x-t") == "1" for h in r.headers)
    assert SECRET not in text and "s3cret" not in caplog.text and "s3cret" not in text
    assert len(memory.requests) == sum(LOAD.values())


def test_a_receiver_that_is_gone_blocks_no_request() -> None:
    """Nothing listening: requests are served at their usual pace, the store keeps up."""
    memory = MemoryBackend()
    instrument.configure(backends=[memory], flush_interval=0.05,
                         otlp_endpoint="http://127.0.0.1:9/v1/metrics", otlp_interval=0.05)
    with werkzeug_server(make_app()) as url:
        started = time.monotonic()
        drive(url, rounds=3)
        elapsed = time.monotonic() - started

        def otlp() -> dict[str, Any]:
            return next(b for b in runtime.stats()["backends"] if b["name"] == "otlp")

        failing = wait_until(lambda: (h := otlp())["consecutive_failures"] and h,
                             what="the otlp backend failing")
        wait_until(lambda: len(memory.requests) == 3 * sum(LOAD.values()), what="the store")
    assert elapsed < 5.0
    assert "posting to http://127.0.0.1:9/v1/metrics" in failing["last_error"]
    memory_health = next(b for b in runtime.stats()["backends"] if b["name"] == "memory")
    assert memory_health["healthy"] and memory_health["pending_batches"] == 0


@pytest.mark.parametrize(("name", "bad", "hidden"), [
    ("INSTRUMENT_OTLP_ENDPOINT", "127.0.0.1:4318", False),
    ("INSTRUMENT_OTLP_ENDPOINT", "ftp://collector/v1/metrics", False),
    ("INSTRUMENT_OTLP_ENDPOINT", "http://collector:port/v1/metrics", False),
    ("INSTRUMENT_OTLP_HEADERS", "authorization Bearer s3cret", True),
    ("INSTRUMENT_OTLP_INTERVAL", "0", False),
    ("INSTRUMENT_OTLP_INTERVAL", "soon", False),
    ("INSTRUMENT_OTLP_TEMPORALITY", "monotonic", False),
    ("INSTRUMENT_SERVICE_NAME", "  ", False),
])
def test_bad_values_fail_at_start_up(name: str, bad: str, hidden: bool,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The kit refuses to start, naming the variable and (unless secret) the value."""
    monkeypatch.setenv(name, bad)
    with pytest.raises(ConfigError) as info:
        instrument.configure()
    message = str(info.value)
    assert repr(name) in message
    if hidden:
        assert "(hidden)" in message and "s3cret" not in message
    else:
        assert repr(bad) in message


def test_settings_defaults_and_parsing() -> None:
    s = Settings.from_env({})
    assert (s.otlp_endpoint, s.otlp_headers, s.otlp_interval, s.otlp_temporality,
            s.service_name) == (None, (), 10.0, "cumulative", None)
    s = Settings.from_env({"INSTRUMENT_OTLP_ENDPOINT": "https://otel.example:4318",
                           "INSTRUMENT_OTLP_HEADERS": "api-key=a%2Cb, tenant=t1",
                           "INSTRUMENT_OTLP_TEMPORALITY": "Delta"})
    assert s.otlp_endpoint == "https://otel.example:4318/v1/metrics"
    assert s.otlp_headers == (("api-key", "a,b"), ("tenant", "t1"))
    assert s.otlp_temporality == "delta"
    assert "a,b" not in repr(s)


# -- gunicorn: exact totals across two workers -----------------------------------
GUNICORN_APP = textwrap.dedent('''
    import time

    from flask import Flask

    from instrument.flask import Instrument

    app = Flask(__name__)


    @app.get("/work/<int:n>")
    def work(n):
        time.sleep(0.002)  # long enough that both workers get a share
        return "ok"


    @app.post("/work")
    def post_work():
        return "made", 201


    @app.get("/missing")
    def missing():
        return "no", 404


    Instrument(app)
''')


def test_gunicorn_exports_equal_the_store(tmp_path: Path, db_path: Path) -> None:
    """Two workers export their own series; the receiver's totals equal api_metrics exactly."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "gapp.py").write_text(GUNICORN_APP)
    plan = [("GET", "/work/{i}", 120), ("POST", "/work", 40), ("GET", "/missing", 25)]
    with receiver() as r:
        env = {"INSTRUMENT_FLUSH_INTERVAL": "0.1", "INSTRUMENT_OTLP_ENDPOINT": r.url,
               "INSTRUMENT_OTLP_INTERVAL": "0.3", "INSTRUMENT_SERVICE_NAME": "gshop"}
        with gunicorn_server(app_dir, "gapp:app", env=env) as server:
            errors: list[BaseException] = []

            def client(c: int) -> None:
                try:
                    with requests.Session() as s:
                        for method, path, n in plan:
                            for i in range(c, n, 4):
                                resp = s.request(method, server.url + path.format(i=i),
                                                 timeout=10)
                                assert resp.status_code in (200, 201, 404)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, server.output()
            workers = server.worker_pids()
            assert server.terminate() == 0, server.output()  # last exports at worker exit
        exports = r.exports()
    last: dict[str, ExportMetricsServiceRequest] = {}
    for message in exports:
        check_rules(message, CUMULATIVE)
        resource = resource_of(message)
        assert resource["service.name"] == "gshop"
        last[resource["service.instance.id"]] = message  # cumulative: the latest holds all
    exported: Counter[tuple[str, str, int]] = Counter()
    per_pid = {}
    for message in last.values():
        counts = http_counts(message)
        exported.update(counts)
        per_pid[resource_of(message)["process.pid"]] = sum(counts.values())
    stored = Counter({(e, m, s): c for e, m, s, c in query(
        db_path, "SELECT endpoint, method, status_code, COUNT(*) FROM api_metrics"
                 " GROUP BY 1, 2, 3")})
    assert sum(stored.values()) == 185
    assert exported == stored
    assert exported == Counter({("/work/<int:n>", "GET", 200): 120, ("/work", "POST", 201): 40,
                                ("/missing", "GET", 404): 25})
    stored_pids = dict(query(db_path, "SELECT pid, COUNT(*) FROM api_metrics GROUP BY pid"))
    assert {p: c for p, c in per_pid.items() if c} == stored_pids
    assert set(stored_pids) <= workers and len(stored_pids) == 2  # both workers served
