"""The write path: many rows a statement, rollups held under load, tier blobs, totals."""

from __future__ import annotations

import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from instrument.backends.sqlite import SQLiteBackend, connect
from instrument.core.aggregate import Aggregator
from instrument.core.batch import Batch
from instrument.core.buffer import Recorder
from instrument.core.flusher import Flusher
from instrument.core.histogram import PER_DOUBLING, bucket_index
from instrument.exporters.prometheus import _DURATION_LIMITS, _cumulative
from instrument.storage.histblob import encode_hist, merge_blobs
from instrument.storage.rows import COARSE_PERIODS, tier_rows
from instrument.storage.sqlite_metrics import insert_rows, insert_values
from instrument.testing import MemoryBackend

ROUTES = ["/a", "/b/{id}", "/c"]


def _http(t0: float, ms: float, route: str = "/a", status: int = 200) -> tuple[Any, ...]:
    return ("http", t0, t0 + ms / 1000.0, t0 + ms / 2000.0, route, "GET", status, 10, 300,
            None, False)


def _samples(n: int, start: float, step: float, seed: int = 3) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    return [_http(start + i * step, rng.lognormvariate(2.0, 1.0), rng.choice(ROUTES),
                  rng.choice((200, 200, 404, 500))) for i in range(n)]


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("width", [3, 8, 12])
@pytest.mark.parametrize("count", [0, 1, 3, 4, 5, 16, 17, 21, 63, 64, 65, 82, 83, 84, 124, 125,
                                   166, 333, 1000])
def test_insert_rows_stores_every_row_in_order(tmp_path: Path, width: int, count: int,
                                               flat: bool) -> None:
    """Rows, as tuples or held flat, go in whole and in order around every statement size."""
    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    cols = ", ".join(f"c{i}" for i in range(width))
    conn.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, {cols})")
    rows = [tuple(r * width + c for c in range(width)) for r in range(count)]
    if flat:
        insert_values(conn, f"INSERT INTO t ({cols})", width, [v for r in rows for v in r])
    else:
        insert_rows(conn, f"INSERT INTO t ({cols})", width, rows)
    assert conn.execute(f"SELECT {cols} FROM t ORDER BY id").fetchall() == rows


def test_insert_rows_upserts_add_to_stored_rows(tmp_path: Path) -> None:
    """With an ON CONFLICT tail, a second batch of the same keys adds to the first."""
    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    tail = " ON CONFLICT(k) DO UPDATE SET n = n + excluded.n"
    insert_rows(conn, "INSERT INTO t", 2, [(k, 1) for k in range(200)], tail)
    insert_rows(conn, "INSERT INTO t", 2, [(k, k) for k in range(100, 300)], tail)
    got = dict(conn.execute("SELECT k, n FROM t").fetchall())
    assert got == {k: (1 if k < 200 else 0) + (k if k >= 100 else 0) for k in range(300)}


def test_none_and_bytes_are_bound_as_null_and_blob(tmp_path: Path) -> None:
    """The adapters the backend registers for speed bind None and bytes exactly as before."""
    import instrument.backends.sqlite  # noqa: F401  (registers them)

    conn = sqlite3.connect(tmp_path / "t.db")
    conn.execute("CREATE TABLE t (a, b, c)")
    conn.execute("INSERT INTO t VALUES (?, ?, ?)", (None, b"\x00\xff", bytearray(b"x")))
    assert conn.execute("SELECT typeof(a), typeof(b), b, typeof(c) FROM t").fetchone() == (
        "null", "blob", b"\x00\xff", "blob")


def _reference_tiers(rollups: dict[tuple[Any, ...], list[Any]]) -> dict[tuple[Any, ...], bytes]:
    hists: dict[tuple[Any, ...], Counter[int]] = {}
    for (minute, kind, name, method, _), v in rollups.items():
        for period in (60, *COARSE_PERIODS):
            hists.setdefault((period, minute - minute % period, kind, name, method),
                             Counter()).update(v[7])
    return {k: encode_hist(h) for k, h in hists.items()}


def test_tier_blobs_are_the_encoded_sums_of_their_minutes() -> None:
    """Each tier's blob equals encode_hist of the buckets summed over its minutes and statuses."""
    rng = random.Random(11)
    rollups: dict[tuple[Any, ...], list[Any]] = {}
    for _ in range(400):
        minute = 21600 * 1000 + 60 * rng.randrange(0, 400)  # spans 10-minute and hour blocks
        key = (minute, "http", rng.choice(ROUTES), "GET", rng.choice((200, 500)))
        v = rollups.setdefault(key, [0, 0, 0.0, 0.0, 0.0, 0, 0, {}])
        for _ in range(rng.randint(1, 5)):
            b = rng.randint(-160, 300)
            v[7][b] = v[7].get(b, 0) + rng.randint(1, 1000)
    _, hists = tier_rows(rollups)
    assert {tuple(r[:5]): r[5] for r in hists} == _reference_tiers(rollups)


def test_merged_blobs_hold_the_summed_buckets() -> None:
    """instrument_hist_merge's function adds two histograms bucket by bucket."""
    rng = random.Random(5)
    for _ in range(500):
        a = {rng.randint(-160, 300): rng.randint(1, 10**12) for _ in range(rng.randint(1, 30))}
        b = {rng.randint(-160, 300): rng.randint(1, 10**12) for _ in range(rng.randint(1, 30))}
        assert merge_blobs(encode_hist(a), encode_hist(b)) == encode_hist(Counter(a) + Counter(b))
    assert merge_blobs(None, b"x") == b"x" and merge_blobs(b"x", None) == b"x"


def test_total_duration_buckets_are_per_doubling_and_exposition_counts_exact(
        tmp_path: Path) -> None:
    """Totals keep one duration bucket per doubling; the le counts equal the fine buckets'."""
    db = tmp_path / "m.db"
    backend = SQLiteBackend(str(db))
    samples = _samples(3000, time.perf_counter() - 30, 0.01)
    backend.write(Aggregator().aggregate(samples))
    backend.close()
    conn = connect(str(db))
    stored = conn.execute("SELECT bucket, sum(count) FROM metric_total_buckets"
                          " WHERE family = 'duration' GROUP BY bucket").fetchall()
    assert stored and all(b % PER_DOUBLING == 0 for b, _ in stored)
    fine = Counter(bucket_index((s[2] - s[1]) * 1000.0) for s in samples)
    assert _cumulative(dict(stored), _DURATION_LIMITS) == _cumulative(fine, _DURATION_LIMITS)
    assert sum(c for _, c in stored) == len(samples)


def test_aggregating_into_a_held_batch_equals_one_batch_of_everything() -> None:
    """Rollups held across drains sum to what one aggregate of all samples gives."""
    samples = _samples(5000, time.perf_counter() - 200, 0.04)
    one, parts = Aggregator(), Aggregator()
    whole = one.aggregate(samples)
    held = Batch()
    rows: list[tuple[Any, ...]] = []
    for i in range(0, len(samples), 700):
        part = parts.aggregate(samples[i:i + 700], held)
        assert part.samples == 0 and not part.rollups and not part.sizes
        rows += part.requests
    assert held.rollups == whole.rollups and held.sizes == whole.sizes
    assert held.samples == whole.samples == len(samples)
    assert [r[1:] for r in rows] == [r[1:] for r in whole.requests]


def _fill(recorder: Recorder, samples: list[tuple[Any, ...]]) -> None:
    for s in samples:
        recorder.add(s)


def test_under_load_raw_rows_go_every_cycle_and_rollups_when_flushed() -> None:
    """Woken by the high-water mark, each cycle writes its raw rows; rollups wait for a flush."""
    memory = MemoryBackend()
    recorder = Recorder(capacity=4096)
    flusher = Flusher(recorder, [memory], interval=3600.0)
    samples = _samples(3000, time.perf_counter() - 10, 0.001)
    for i in range(0, 3000, 1000):
        _fill(recorder, samples[i:i + 1000])
        flusher._cycle(loaded=True)
    assert [len(b.requests) for b in memory.batches] == [1000, 1000, 1000]
    assert not any(b.rollups or b.samples for b in memory.batches)
    assert flusher.flush()
    last = memory.batches[-1]
    assert last.samples == 3000 and sum(v[0] for v in last.rollups.values()) == 3000
    assert flusher.states[0].samples_written == 3000


def test_held_rollups_go_out_once_the_rollup_interval_passed() -> None:
    """Under continuous load the rollups are handed over no later than each rollup interval."""
    memory = MemoryBackend()
    recorder = Recorder(capacity=4096)
    flusher = Flusher(recorder, [memory], interval=0.2)
    samples = _samples(200, time.perf_counter() - 5, 0.001)
    begun = time.perf_counter()
    cycles = 0
    while not any(b.rollups for b in memory.batches):
        assert time.perf_counter() - begun < 5.0, "held rollups never went out"
        _fill(recorder, samples)
        flusher._cycle(loaded=True)
        cycles += 1
    assert time.perf_counter() - begun >= 0.2 and cycles > 1
    with_rollups = [b for b in memory.batches if b.rollups]
    assert with_rollups[0].samples == 200 * cycles
    assert with_rollups[0].requests  # the releasing cycle's own raw rows ride along


def test_the_thread_hands_held_rollups_over_without_new_samples() -> None:
    """After a burst stops, the flusher thread writes the held rollups on its own, unflushed."""
    memory = MemoryBackend()
    recorder = Recorder(capacity=512)  # high-water mark 256: the burst wakes the thread
    flusher = Flusher(recorder, [memory], interval=0.3)
    flusher.start()
    try:
        _fill(recorder, _samples(250, time.perf_counter() - 5, 0.001))
        _fill(recorder, _samples(10, time.perf_counter() - 5, 0.001))
        deadline = time.monotonic() + 5.0
        while sum(b.samples for b in memory.batches) < 260:
            assert time.monotonic() < deadline, [b.samples for b in memory.batches]
            time.sleep(0.01)
        assert sum(len(b.requests) for b in memory.batches) == 260
    finally:
        flusher.shutdown(5.0)


def test_rollup_interval_longer_than_interval_holds_across_timer_cycles() -> None:
    """With rollup_interval above the interval, timer cycles write raw rows and hold rollups."""
    memory = MemoryBackend()
    recorder = Recorder(capacity=4096)
    flusher = Flusher(recorder, [memory], interval=0.01, rollup_interval=3600.0)
    samples = _samples(300, time.perf_counter() - 5, 0.001)
    for i in range(0, 300, 100):
        _fill(recorder, samples[i:i + 100])
        flusher._cycle()
    assert [len(b.requests) for b in memory.batches] == [100, 100, 100]
    assert not any(b.rollups for b in memory.batches)
    assert flusher.shutdown(5.0)
    assert sum(v[0] for b in memory.batches for v in b.rollups.values()) == 300
