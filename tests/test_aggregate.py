"""The aggregator: rows and per-minute rollups from samples, status parsing, errors, cardinality."""

from __future__ import annotations

import calendar
import os
import time
from typing import Any

import pytest

import instrument
from instrument.core.aggregate import Aggregator
from instrument.core.batch import OVERFLOW, UNMATCHED, iso_utc
from instrument.core.runtime import runtime
from instrument.testing import MemoryBackend

T0 = time.perf_counter()


def _http(route: str | None = "/r", status: int | str = 200,
          exc: type[BaseException] | None = None, *, method: str = "GET", ms: float = 5.0,
          ttfb_ms: float | None = 2.0, disconnected: bool = False) -> tuple[Any, ...]:
    tf = T0 + ttfb_ms / 1000 if ttfb_ms is not None else 0.0
    return ("http", T0, T0 + ms / 1000, tf, route, method, status, 11, 22, exc, disconnected)


def _request_rows(batch: Any) -> list[dict[str, Any]]:
    keys = ("timestamp", "endpoint", "method", "status_code", "response_time_ms",
            "request_size_bytes", "response_size_bytes", "error_count", "ttfb_ms",
            "exception", "client_disconnected", "pid")
    return [dict(zip(keys, row, strict=True)) for row in batch.requests]


def test_routes_past_max_routes_fold_into_overflow() -> None:
    """Beyond max_routes distinct names, new routes are recorded as __overflow__."""
    agg = Aggregator(max_routes=3)
    batch = agg.aggregate([_http(f"/r{i}") for i in range(10)])
    names = [r["endpoint"] for r in _request_rows(batch)]
    assert names == ["/r0", "/r1", "/r2"] + [OVERFLOW] * 7
    counts = {k[2]: v[0] for k, v in batch.rollups.items()}
    assert counts == {"/r0": 1, "/r1": 1, "/r2": 1, OVERFLOW: 7}


def test_known_routes_stay_known_across_batches() -> None:
    """A route admitted once keeps its own name in later batches; newcomers still overflow."""
    agg = Aggregator(max_routes=2)
    agg.aggregate([_http("/a"), _http("/b")])
    batch = agg.aggregate([_http("/b"), _http("/c"), _http("/a")])
    assert [r["endpoint"] for r in _request_rows(batch)] == ["/b", OVERFLOW, "/a"]


def test_the_cardinality_budget_is_per_kind() -> None:
    """Function names do not use up the route budget, and vice versa."""
    agg = Aggregator(max_routes=1)
    batch = agg.aggregate([
        _http("/only"), ("call", T0, T0 + 0.001, "job.one", None),
        _http("/second"), ("call", T0, T0 + 0.001, "job.two", None),
    ])
    assert [r["endpoint"] for r in _request_rows(batch)] == ["/only", OVERFLOW]
    assert [c[2] for c in batch.calls] == ["job.one", OVERFLOW]


def test_max_routes_setting_reaches_the_aggregator() -> None:
    """configure(max_routes=N) caps distinct names end to end."""
    memory = MemoryBackend()
    instrument.configure(backends=[memory], max_routes=5, flush_interval=60)
    for i in range(50):
        runtime.recorder.add(_http(f"/user/{i}"))
    assert instrument.flush() is True
    assert len({r["endpoint"] for r in memory.requests}) == 6
    assert memory.get_sample_value("http", OVERFLOW) == 45


def test_unmatched_requests_are_named_unmatched() -> None:
    """A request no route matched (route None) is recorded as __unmatched__."""
    batch = Aggregator().aggregate([_http(None, 404)])
    assert _request_rows(batch)[0]["endpoint"] == UNMATCHED


@pytest.mark.parametrize(("status", "code"), [
    ("200 OK", 200), ("404 Not Found", 404), ("503 Service Unavailable", 503),
    ("301 Moved Permanently", 301), ("204", 204), (201, 201),
])
def test_wsgi_status_strings_are_parsed(status: int | str, code: int) -> None:
    """A WSGI status line becomes its integer code in rows and rollup keys."""
    batch = Aggregator().aggregate([_http(status=status)])
    assert _request_rows(batch)[0]["status_code"] == code
    (key,) = batch.rollups
    assert key[4] == code and isinstance(key[4], int)


def test_an_unparseable_status_line_becomes_zero() -> None:
    """A malformed status never breaks the batch; it is stored as 0."""
    batch = Aggregator().aggregate([_http(status="OK"), _http(status="200 OK")])
    assert [r["status_code"] for r in _request_rows(batch)] == [0, 200]


@pytest.mark.parametrize(("status", "exc", "errors"), [
    (200, None, 0), (404, None, 0), (499, None, 0), (500, None, 1), (503, None, 1),
    ("500 Internal Server Error", None, 1), ("502 Bad Gateway", None, 1),
    (200, ValueError, 1), (0, ConnectionResetError, 1), (404, KeyError, 1),
])
def test_error_count_rule_for_requests(status: int | str, exc: type[BaseException] | None,
                                       errors: int) -> None:
    """A request is an error when its status is 500 or more or it raised."""
    batch = Aggregator().aggregate([_http(status=status, exc=exc)])
    row = _request_rows(batch)[0]
    assert row["error_count"] == errors
    assert row["exception"] == (exc.__name__ if exc else None)
    assert next(iter(batch.rollups.values()))[1] == errors


@pytest.mark.parametrize(("sample", "errors"), [
    (("call", T0, T0 + 0.001, "f", None), 0),
    (("call", T0, T0 + 0.001, "f", ValueError), 1),
    (("client", T0, T0 + 0.001, "api", "GET", 200, 1, 2, None), 0),
    (("client", T0, T0 + 0.001, "api", "GET", 404, 1, 2, None), 0),
    (("client", T0, T0 + 0.001, "api", "GET", 502, 1, 2, None), 1),
    (("client", T0, T0 + 0.001, "api", "GET", 0, 0, 0, TimeoutError), 1),
])
def test_error_count_rule_for_calls_and_clients(sample: tuple[Any, ...], errors: int) -> None:
    """Calls are errors when they raised; outgoing requests also when the status is >= 500."""
    batch = Aggregator().aggregate([sample])
    assert next(iter(batch.rollups.values()))[1] == errors
    exc = sample[-1]
    assert batch.calls[0][6] == (exc.__name__ if exc else None)


def test_request_rows_carry_every_column() -> None:
    """Durations, sizes, TTFB, disconnect flag and pid are all filled from the sample."""
    before = time.time()
    batch = Aggregator().aggregate([
        _http(ms=12.5, ttfb_ms=4.0, disconnected=True), _http(ttfb_ms=None, method="POST")])
    first, second = _request_rows(batch)
    assert first["response_time_ms"] == pytest.approx(12.5)
    assert first["ttfb_ms"] == pytest.approx(4.0)
    assert (first["request_size_bytes"], first["response_size_bytes"]) == (11, 22)
    assert first["client_disconnected"] == 1 and second["client_disconnected"] == 0
    assert second["ttfb_ms"] is None
    assert first["pid"] == os.getpid()
    stored = calendar.timegm(time.strptime(first["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(stored - (before - (time.perf_counter() - T0))) < 2  # wall time of T0, UTC


def test_rollups_sum_per_minute_and_key() -> None:
    """Rollups add counts, errors, durations, TTFB and bytes and keep the max per key."""
    batch = Aggregator().aggregate([
        _http(ms=10, ttfb_ms=1), _http(ms=30, ttfb_ms=None), _http(ms=20, status=500),
        _http(ms=5, method="POST"),
    ])
    (minute,) = {k[0] for k in batch.rollups}
    stamp = batch.requests[0][0]
    assert minute == calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) // 60 * 60
    get = batch.rollups[(minute, "http", "/r", "GET", 200)]
    assert get[:2] == [2, 0]
    assert get[2] == pytest.approx(40) and get[3] == pytest.approx(30)
    assert get[4] == pytest.approx(1) and get[5:7] == [22, 44]
    assert batch.rollups[(minute, "http", "/r", "GET", 500)][:2] == [1, 1]
    assert batch.rollups[(minute, "http", "/r", "POST", 200)][0] == 1
    assert minute % 60 == 0


def test_other_kinds_pass_through_untouched() -> None:
    """Samples of kinds the aggregator does not know reach backends as the same tuples."""
    system = ("system", ("2024-01-01T00:00:00", 1.0))
    log = ("log", "anything", {"k": 1})
    batch = Aggregator().aggregate([system, _http(), log, system])
    assert batch.other == {"system": [system, system], "log": [log]}
    assert batch.other["system"][0] is system
    assert len(batch) == 4


def test_iso_utc_formats_with_microseconds() -> None:
    """Timestamps are ISO 8601 UTC with microseconds, like the rows store them."""
    assert iso_utc(0.5) == "1970-01-01T00:00:00.500000"
    assert iso_utc(86400 + 61.25) == "1970-01-02T00:01:01.250000"


def test_a_batch_of_raw_rows_leaves_nothing_for_the_garbage_collector() -> None:
    """10,000 requests and calls aggregate into a handful of GC-tracked objects, not a row each."""
    import gc

    samples = [_http(f"/r{i % 7}", ms=1.0 + i % 50) for i in range(8000)]
    samples += [("call", T0, T0 + 0.002, "jobs.resize", None)] * 2000
    agg = Aggregator()
    agg.aggregate(samples[:100])  # first-use caches, outside the count
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        before = len(gc.get_objects())
        batch = agg.aggregate(samples)
        added = len(gc.get_objects()) - before
    finally:
        if was:
            gc.enable()
    assert len(batch.requests) == 8000 and len(batch.calls) == 2000
    assert added < 200  # rollup lists and dicts; a tuple per row would be 10,000 more
