"""Load: the short soak over real servers, and exact drop accounting with a buffer too small.

The soak itself is ``benchmarks/soak.py`` (``--quick`` here, about 40 s; the
five-minute run is part of ``make bench``): gunicorn with 4 workers and uvicorn
under traffic from a separate client process, then SIGTERM. The in-process
tests pin down the two promises about a full buffer: every sample is either
stored or counted as dropped, and a request that finds the buffer full costs
no more than one that does not.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import instrument
from instrument.core.batch import Batch
from instrument.core.runtime import runtime
from instrument.testing import MemoryBackend
from instrument.wsgi import InstrumentMiddleware
from tests.reliability.harness import FIGURES, plain_app

REPO = Path(__file__).resolve().parents[2]
RSS_BOUND_KIB = 16 * 1024


def test_short_soak_stores_every_answer(tmp_path: Path) -> None:
    """gunicorn and uvicorn under sustained load: stored == answered per pid, memory flat."""
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "benchmarks/soak.py", "--quick", "--json", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    servers = json.loads(out.read_text())["servers"]
    for name, r in servers.items():
        assert r["exact_per_pid"], (name, r)
        assert r["answered"] > 300 and r["exit_code"] in (0, -15), (name, r)
        assert r["client_errors"] == {}, (name, r)
        assert r["rss_growth_after_warmup_kib"] < RSS_BOUND_KIB, (name, r)
        FIGURES[f"soak (quick) {name}: answered"] += r["answered"]
        FIGURES[f"soak (quick) {name}: stored"] += r["stored"]
        FIGURES[f"soak (quick) {name}: dropped"] += r["dropped"]
    assert servers["gunicorn"]["dropped"] == servers["uvicorn"]["dropped"] == 0
    assert servers["small-buffer"]["dropped"] > 0
    assert servers["small-buffer"]["kit_dropped_in_store"] == servers["small-buffer"]["dropped"]


class Gated(MemoryBackend):
    """Holds the flusher inside ``write`` until opened: the buffer cannot drain."""

    name = "gated"

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def write(self, batch: Batch) -> None:
        self.entered.set()
        self.gate.wait(60)
        super().write(batch)


def call(app: Any, path: str = "/work") -> None:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SCRIPT_NAME": "",
               "QUERY_STRING": "", "wsgi.url_scheme": "http", "SERVER_NAME": "h",
               "SERVER_PORT": "80"}
    body = app(environ, lambda s, h, e=None: None)
    for _ in body:
        pass
    body.close()


def test_drops_counted_exactly_from_many_threads() -> None:
    """Buffer of 16, flusher stuck, 8 threads x 2,500 requests: stored + dropped == sent."""
    backend = Gated()
    instrument.configure(backends=[backend], buffer_size=16, flush_interval=0.05)
    app = InstrumentMiddleware(plain_app)
    call(app)  # the first sample wakes the flusher, which then blocks in write
    assert backend.entered.wait(10)
    threads = [threading.Thread(target=lambda: [call(app) for _ in range(2500)])
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dropped = instrument.stats()["dropped"]
    backend.gate.set()
    assert instrument.flush(10)
    stored = sum(len(b) for b in backend.batches)
    assert stored + dropped == 1 + 8 * 2500
    assert dropped >= 8 * 2500 - 16
    FIGURES["drops accounted in process (stored + dropped == sent)"] += stored + dropped


def test_full_buffer_costs_a_request_nothing_extra() -> None:
    """A request that finds the buffer full is no slower than one that appends (CPU time)."""
    backend = Gated()
    instrument.configure(backends=[backend], buffer_size=16, flush_interval=0.05)
    app = InstrumentMiddleware(plain_app)
    call(app)
    assert backend.entered.wait(10)
    recorder = runtime.recorder

    def timed(capacity: int) -> float:
        recorder.resize(capacity)
        t0 = time.thread_time()
        for _ in range(5000):
            call(app)
        return (time.thread_time() - t0) / 5000

    full, room = [], []
    try:
        for _ in range(9):  # interleaved rounds; the fastest of each: noise only adds time
            full.append(timed(16))  # already more than 16 queued: every sample is dropped
            room.append(timed(10**9))
    finally:
        recorder.resize(16)
        backend.gate.set()
    # (medians failed once in a full CI run at 1.23 on a busy 2-core VM; a drop does strictly
    # less work than an append, so the fastest rounds compare the code, not the neighbours)
    ratio = min(full) / min(room)
    assert ratio < 1.2, (min(full), min(room), statistics.median(full), statistics.median(room))
    FIGURES["full-buffer request cost vs normal (percent)"] += round(100 * ratio)
