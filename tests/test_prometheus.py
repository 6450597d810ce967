"""Prometheus exposition for real: a Prometheus scraping gunicorn workers, promtool, negotiation.

A real ``prometheus`` (Debian package) runs on a free loopback port with a
temporary config and data directory and scrapes every second. The app runs
under gunicorn with three workers; whichever worker answers a scrape reports
the totals every worker has flushed into the shared SQLite file, so what
Prometheus stores must equal the requests the client sent, and stay monotonic
while ``--max-requests`` recycles workers.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import instrument
from instrument.backends.sqlite import SQLiteBackend
from instrument.core.aggregate import Aggregator
from instrument.core.batch import Batch
from tests.servers import (
    HOST,
    gunicorn_server,
    listening_socket,
    query,
    uvicorn_server,
    wait_until,
    werkzeug_server,
)

APP_MODULE = textwrap.dedent('''
    """A Flask app gunicorn loads in the master (--preload) before forking its workers."""
    import time

    from flask import Flask

    from instrument.flask import Instrument

    app = Flask(__name__)


    @app.get("/ok/<int:n>")
    def ok(n):
        time.sleep(0.002)  # long enough that every worker gets a share
        return "x" * n


    @app.get("/fail")
    def fail():
        return "no", 500


    Instrument(app)
''')
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


# -- a real Prometheus -------------------------------------------------------------------
class Prometheus:
    """A running Prometheus server and its HTTP query API."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def value(self, promql: str) -> float | None:
        """The single value of an instant query, or None while it has no result."""
        r = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        r.raise_for_status()
        result = r.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def vector(self, promql: str, label: str) -> dict[str, float]:
        r = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        r.raise_for_status()
        return {e["metric"][label]: float(e["value"][1]) for e in r.json()["data"]["result"]}


@contextlib.contextmanager
def prometheus(target_url: str, tmp_path: Path) -> Iterator[Prometheus]:
    """Run ``prometheus`` scraping ``target_url``'s /metrics every second."""
    target = urllib.parse.urlsplit(target_url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "app", "static_configs": [{"targets": [target]}]}],
    }))
    sock = listening_socket()  # a free port; released just before Prometheus binds it
    port = sock.getsockname()[1]
    sock.close()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address={HOST}:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT)
    server = Prometheus(f"http://{HOST}:{port}", proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{log.read_text()}")
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{server.url}/-/ready", timeout=1).status_code == 200
        return False

    try:
        wait_until(ready, timeout=30, interval=0.1, what="prometheus to be ready")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- helpers -----------------------------------------------------------------------------
def write_app(tmp_path: Path) -> Path:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "papp.py").write_text(APP_MODULE)
    return app_dir


def send(server_url: str, total: int, clients: int = 4) -> Counter[str]:
    """``total`` requests from ``clients`` threads; returns the answers per status code."""
    answered: Counter[str] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(c: int) -> None:
        try:
            with requests.Session() as s:
                for i in range(c, total, clients):
                    path = "/fail" if i % 8 == 0 else f"/ok/{i % 50}"
                    r = s.get(server_url + path, timeout=10)
                    with lock:
                        answered[str(r.status_code)] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    return answered


def scraped_total(url: str) -> float:
    """sum(instrument_http_requests_total) in one scrape of ``url``."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(s.value for fam in text_string_to_metric_families(text)
               if fam.name == "instrument_http_requests" for s in fam.samples)


def gunicorn_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"INSTRUMENT_PROMETHEUS": "true", "INSTRUMENT_FLUSH_INTERVAL": "0.2",
            "INSTRUMENT_METRICS_DB": str(tmp_path / "metrics.db"), **extra}


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)


# -- tests -------------------------------------------------------------------------------
def test_prometheus_stores_the_totals_of_all_three_workers(tmp_path: Path) -> None:
    """A real Prometheus scraping 3 gunicorn workers stores exactly the requests sent, by status."""
    total = 240
    with gunicorn_server(write_app(tmp_path), "papp:app", workers=3,
                         env=gunicorn_env(tmp_path)) as server, \
            prometheus(server.url, tmp_path) as prom:
        answered = send(server.url, total)
        assert sum(answered.values()) == total
        wait_until(lambda: prom.value("sum(instrument_http_requests_total)") == total,
                   timeout=30, interval=0.25, what="Prometheus to hold every request")
        by_status = prom.vector("sum by (status) (instrument_http_requests_total)", "status")
        assert by_status == {k: float(v) for k, v in answered.items()}
        assert prom.value('sum(instrument_http_request_duration_seconds_count'
                          '{route="/ok/<int:n>"})') == answered["200"]
        assert prom.value("up") == 1
        pids = query(tmp_path / "metrics.db", "SELECT COUNT(DISTINCT pid) FROM api_metrics")
        assert pids[0][0] >= 2  # the totals came from several workers
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        assert server.terminate() == 0, server.output()
    check = promtool_check(text)
    assert check.returncode == 0, check.stdout + check.stderr


def test_totals_stay_monotonic_while_max_requests_recycles_workers(tmp_path: Path) -> None:
    """Counters never go back and lose nothing while gunicorn replaces workers every 25 requests."""
    total = 300
    env = gunicorn_env(tmp_path, GUNICORN_CMD_ARGS="--max-requests 25")
    seen: list[float] = []
    stop = threading.Event()
    with gunicorn_server(write_app(tmp_path), "papp:app", workers=3, env=env) as server, \
            prometheus(server.url, tmp_path) as prom:

        def watch() -> None:
            while not stop.is_set():
                with contextlib.suppress(requests.RequestException):
                    seen.append(scraped_total(server.url))
                time.sleep(0.01)  # workers start fast (nothing built up front): look often

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            answered = send(server.url, total, clients=3)
        finally:
            stop.set()
            watcher.join(30)
        assert sum(answered.values()) == total
        wait_until(lambda: scraped_total(server.url) == total, timeout=30,
                   what="every recycled worker's requests in the totals")
        wait_until(lambda: prom.value("sum(instrument_http_requests_total)") == total,
                   timeout=30, interval=0.25, what="Prometheus to hold every request")
        assert prom.value("sum(resets(instrument_http_requests_total[10m]))") == 0
        assert server.terminate() == 0, server.output()
    assert len(seen) >= 10
    assert all(a <= b for a, b in itertools.pairwise(seen)), seen
    pids = query(tmp_path / "metrics.db", "SELECT COUNT(DISTINCT pid) FROM api_metrics")
    assert pids[0][0] > 3 + 3  # workers were really recycled, several times


def _families(text: str) -> dict[str, set[tuple[str, ...]]]:
    return {f.name: {tuple(sorted(s.labels)) for s in f.samples}
            for f in text_string_to_metric_families(text) if f.samples}


def test_flask_and_starlette_export_the_same_names_and_labels(tmp_path: Path) -> None:
    """The WSGI and the ASGI adapter expose identical metric families, labels and route names."""
    from flask import Flask
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from instrument.fastapi import instrument_app
    from instrument.flask import Instrument

    texts = {}
    for kind in ("flask", "starlette"):
        instrument.configure(metrics_db=str(tmp_path / f"{kind}.db"), prometheus=True,
                             flush_interval=0.05)
        if kind == "flask":
            flask_app = Flask(__name__)
            flask_app.add_url_rule("/items/<id>", "item", lambda id: "ok")
            Instrument(flask_app)
            server = werkzeug_server(flask_app)
        else:
            star = Starlette(routes=[Route("/items/{id}", lambda r: PlainTextResponse("ok"))])
            server = uvicorn_server(instrument_app(star))
        with server as url:
            for i in range(5):
                requests.get(f"{url}/items/{i}", timeout=5).raise_for_status()
            instrument.flush(5.0)
            r = requests.get(f"{url}/metrics", headers={"Accept": OPENMETRICS}, timeout=5)
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            assert r.text.endswith("# EOF\n")
            plain = requests.get(f"{url}/metrics", timeout=5)
            assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            texts[kind] = plain.text
        instrument.shutdown()
    flask_f, star_f = _families(texts["flask"]), _families(texts["starlette"])
    assert flask_f == star_f
    assert ("method", "route", "status") in flask_f["instrument_http_requests"]
    assert 'route="/items/<id>"' in texts["flask"] and 'route="/items/{id}"' in texts["starlette"]
    assert "/items/3" not in texts["flask"] + texts["starlette"]  # templates, never raw paths
    assert 'route="/metrics"' not in texts["flask"] + texts["starlette"]  # scrapes unrecorded


def _store_with_everything(db: Path) -> None:
    """Requests, calls, an exception and a system reading written as a worker would."""
    t0 = time.perf_counter()
    samples: list[tuple[Any, ...]] = [
        ("http", t0, t0 + 0.01 * (i + 1), 0.0, "/a/{id}", "GET", 200, 10, 100 * i, None, False)
        for i in range(20)]
    samples.append(("http", t0, t0 + 0.2, 0.0, "/a/{id}", "POST", 500, 5000, 0, KeyError, False))
    samples.append(("call", t0, t0 + 0.003, "jobs.run", ValueError))
    samples.append(("client", t0, t0 + 0.05, "api.example.com", "GET", 200, 0, 700, None))
    batch = Aggregator().aggregate(samples)
    system = Batch()
    system.other["system"] = [("system", time.time(), {
        "cpu_percent": 25.0, "memory_percent": 50.0, "memory_used_mb": 1024.0,
        "network_bytes_sent": 10, "process_rss_mb": 64.0, "process_threads": 4, "pid": 4321})]
    backend = SQLiteBackend(str(db))
    backend.write(batch)
    backend.write(system)
    backend.close()


def test_exporter_command_serves_the_store_and_promtool_accepts_it(tmp_path: Path) -> None:
    """``instrument exporter`` serves every family from the file, valid for promtool."""
    db = tmp_path / "metrics.db"
    _store_with_everything(db)
    proc = subprocess.Popen([sys.executable, "-m", "instrument.cli", "exporter", "--db", str(db),
                             "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving http://" in line, line
        url = line.split("serving ")[1].strip()
        text = requests.get(url, timeout=10).text
        assert requests.get(url.replace("/metrics", "/nope"), timeout=10).status_code == 404
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        if proc.stdout is not None:
            proc.stdout.close()
    check = promtool_check(text)
    assert check.returncode == 0, check.stdout + check.stderr
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(text) for s in f.samples}
    assert values[("instrument_http_requests_total",
                   (("method", "GET"), ("route", "/a/{id}"), ("status", "200")))] == 20
    assert values[("instrument_http_exceptions_total",
                   (("exception", "KeyError"), ("method", "POST"), ("route", "/a/{id}")))] == 1
    assert values[("instrument_function_calls_total", (("function", "jobs.run"),))] == 1
    assert values[("instrument_client_requests_total",
                   (("method", "GET"), ("status", "200"), ("target", "api.example.com")))] == 1
    assert values[("instrument_http_request_size_bytes_bucket",
                   (("le", "4096.0"), ("method", "POST"), ("route", "/a/{id}")))] == 0
    assert values[("instrument_http_request_size_bytes_bucket",
                   (("le", "16384.0"), ("method", "POST"), ("route", "/a/{id}")))] == 1
    assert values[("instrument_system_cpu_usage_ratio", ())] == 0.25
    assert values[("instrument_process_resident_memory_bytes", (("pid", "4321"),))] == 64 * 2**20
    assert values[("instrument_kit_samples_total", ())] == 23  # the system batch counts none
    for bound in ("0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256"):
        key = ("instrument_http_request_duration_seconds_bucket",
               (("le", bound), ("method", "GET"), ("route", "/a/{id}")))
        assert values[key] == sum(1 for i in range(20) if 0.01 * (i + 1) < float(bound))


@pytest.mark.parametrize("accept", ["", OPENMETRICS])
def test_an_unreadable_store_answers_503_not_a_crash(tmp_path: Path, accept: str) -> None:
    """A scrape the store cannot answer is a 503 with the reason; the app keeps serving."""
    from instrument.wsgi import InstrumentMiddleware

    bad = tmp_path / "not-a-db"
    bad.mkdir()
    (bad / "metrics.db").write_bytes(b"this is not sqlite" * 100)
    instrument.configure(metrics_db=str(tmp_path / "ok.db"), prometheus=True)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"fine"]

    mw = InstrumentMiddleware(app)
    from instrument.exporters.serve import MetricsWSGI
    from instrument.exporters.snapshot import SQLiteSource
    from instrument.prometheus import make_registry

    metrics = mw._bypass  # the status-only health check sits in front of /metrics
    while not isinstance(metrics, MetricsWSGI):
        metrics = metrics.app
    metrics._registry = make_registry(SQLiteSource(str(bad / "metrics.db")))
    with werkzeug_server(mw) as url:
        r = requests.get(f"{url}/metrics", headers={"Accept": accept}, timeout=5)
        assert r.status_code == 503 and "cannot read the metrics store" in r.text
        assert requests.get(f"{url}/other", timeout=5).text == "fine"


def test_scrape_benchmark_quick_mode(tmp_path: Path) -> None:
    """benchmarks/scrape.py --quick serves both expositions under gunicorn and reports them."""
    out = tmp_path / "bench.json"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "scrape.py"), "--quick",
                           "--restarts", "20", "--json", str(out)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["restarts"] == 20
    assert data["instrument"]["median_ms"] > 0 and data["instrument"]["bytes"] > 1000
    assert data["prometheus_client_multiprocess"]["files"] == 2 * 20


def test_kit_counters_add_this_process_drops_exactly_once(tmp_path: Path) -> None:
    """Samples dropped by a full buffer reach the totals once, beside the samples written."""
    from instrument.core.runtime import runtime
    from instrument.exporters.snapshot import SQLiteSource

    db = tmp_path / "kit.db"
    instrument.configure(metrics_db=str(db), buffer_size=16, flush_interval=0.05)
    before = runtime.recorder.dropped  # the process counter includes earlier tests' drops
    tight = instrument.timed(name="tight")(lambda: None)
    calls = 20_000
    for _ in range(calls):
        tight()
    assert instrument.flush(10.0)
    dropped = runtime.recorder.dropped - before
    assert dropped > 0
    tight()  # one more batch: the drop count must not be added again
    assert instrument.flush(10.0)
    kit = {row[0]: row[5] for row in SQLiteSource(str(db)).read().counters}
    assert kit["kit_dropped"] == dropped == runtime.recorder.dropped - before
    assert kit["kit_samples"] == calls + 1 - dropped
    assert kit["kit_flush_errors"] == 0
