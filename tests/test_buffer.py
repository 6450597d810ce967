"""The Recorder: bounded, never blocks, counts every drop, wakes the flusher once per crossing.

Requests are stored flat (their fields one by one, ``add_flat``), other samples as one
tuple (``add``); capacity counts requests, :data:`SLOTS` slots each.
"""

from __future__ import annotations

import gc
import threading

from instrument.core.buffer import KIND_CALL, KIND_HTTP, SLOTS, Recorder


def _http(i: int, tid: int = 0) -> tuple[object, ...]:
    return (KIND_HTTP, float(i), float(i) + 1.0, 0.0, "/r", "GET", 200, 0, 2, None, tid)


def _sample(i: int) -> tuple[str, int]:
    return ("probe", i)


def test_drops_are_counted_exactly_when_full() -> None:
    """Requests beyond capacity are dropped, counted one by one, and the kept ones are the first."""
    rec = Recorder(capacity=100)
    for i in range(250):
        rec.add_flat(_http(i))
    assert len(rec.buf) == 100 * SLOTS and rec.buffered == 100
    assert rec.dropped == 150
    assert rec.drain(10**6) == [_http(i) for i in range(100)]


def test_reading_dropped_does_not_advance_the_counter() -> None:
    """The ``dropped`` property reads the counter without changing it."""
    rec = Recorder(capacity=16)
    for i in range(20):
        rec.add_flat(_http(i))
    assert rec.dropped == 4
    assert rec.dropped == 4


def test_tuples_take_one_slot_each() -> None:
    """A tuple sample (a log line, a system reading) takes one slot of the request-sized ones."""
    rec = Recorder(capacity=4)
    for i in range(4 * SLOTS + 5):
        rec.add(_sample(i))
    assert len(rec.buf) == 4 * SLOTS and rec.dropped == 5


def test_flat_and_tuple_samples_drain_as_tuples_in_order() -> None:
    """Mixed flat and tuple samples come back as the tuples that went in, in arrival order."""
    rec = Recorder(capacity=100)
    sent: list[tuple[object, ...]] = []
    for i in range(60):
        sample = (_http(i) if i % 3 == 0 else (KIND_CALL, float(i), float(i), "f", None)
                  if i % 3 == 1 else _sample(i))
        (rec.add if sample[0] == "probe" else rec.add_flat)(sample)
        sent.append(sample)
    got: list[tuple[object, ...]] = []
    while True:
        part = rec.drain(2)  # cuts records mid-way: the rest of a cut one is popped too
        if not part:
            break
        got.extend(part)
    assert got == sent and len(rec.buf) == 0


def test_flat_requests_leave_nothing_for_the_garbage_collector() -> None:
    """Buffering requests flat adds no object the cyclic garbage collector tracks."""
    rec = Recorder(capacity=10_000)
    gc.collect()
    before = len(gc.get_objects())
    for i in range(5_000):
        rec.add_flat(_http(i))
    assert len(gc.get_objects()) - before < 50  # tuples would add 5,000


def test_concurrent_appends_lose_nothing_from_the_count() -> None:
    """With 8 threads storing at once, recorded + dropped equals what was sent, records whole."""
    threads_n, per_thread, cap = 8, 20_000, 5_000
    rec = Recorder(capacity=cap)
    start = threading.Barrier(threads_n)

    def produce(tid: int) -> None:
        start.wait()
        add = rec.add_flat
        for i in range(per_thread):
            add(_http(i, tid))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent = threads_n * per_thread
    kept = rec.drain(10**9)
    assert len(kept) + rec.dropped == sent
    # The length check and the store are two steps, so each racing thread may slip one in.
    assert cap <= len(kept) <= cap + threads_n - 1
    assert all(s[0] == KIND_HTTP and len(s) == 11 for s in kept)  # never interleaved
    for tid in range(threads_n):  # each thread's kept samples stay in its own sending order
        mine = [s[1] for s in kept if s[10] == tid]
        assert mine == sorted(mine)


def test_concurrent_appends_and_drains_account_for_every_sample() -> None:
    """While a drainer empties the buffer, drained + left + dropped still equals sent."""
    threads_n, per_thread = 8, 10_000
    rec = Recorder(capacity=2_000)
    drained: list[tuple[object, ...]] = []
    done = threading.Event()

    def drain() -> None:
        while not done.is_set():
            drained.extend(rec.drain(500))
        drained.extend(rec.drain(10**9))

    def produce(tid: int) -> None:
        for i in range(per_thread):
            if i % 2:
                rec.add(("probe", tid, i))
            else:
                rec.add_flat(_http(i, tid))

    drainer = threading.Thread(target=drain)
    drainer.start()
    threads = [threading.Thread(target=produce, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    drainer.join()
    assert len(drained) + len(rec.buf) + rec.dropped == threads_n * per_thread
    keys = [(s[1], s[2]) if s[0] == "probe" else (s[10], s[1]) for s in drained]
    assert len(set(keys)) == len(keys)


def test_high_water_mark_wakes_once_per_crossing() -> None:
    """The wake callback fires on the sample that crosses half capacity, not on others."""
    rec = Recorder(capacity=64)
    wakes: list[int] = []
    rec.wake = lambda: wakes.append(len(rec.buf))
    below = rec.high // SLOTS + (1 if rec.high % SLOTS else 0)  # requests that stay below
    for i in range(below):
        rec.add_flat(_http(i))
    assert wakes == []
    rec.add_flat(_http(below))
    assert len(wakes) == 1 and wakes[0] > rec.high
    for i in range(200):
        rec.add_flat(_http(i))
    assert len(wakes) == 1
    rec.drain(10**6)
    for i in range(below + 1):
        rec.add_flat(_http(i))
    assert len(wakes) == 2


def test_resize_moves_the_high_water_mark() -> None:
    """After resize the capacity and the wake threshold follow the new size."""
    rec = Recorder(capacity=1000)
    rec.resize(40)
    assert (rec.capacity, rec.cap, rec.high) == (40, 40 * SLOTS, 20 * SLOTS)
    for i in range(50):
        rec.add_flat(_http(i))
    assert rec.buffered == 40
    assert rec.dropped == 10


def test_drain_returns_samples_in_arrival_order_up_to_the_limit() -> None:
    """drain(limit) pops the oldest samples first (limit requests' worth) and keeps the rest."""
    rec = Recorder(capacity=100)
    for i in range(30):
        rec.add_flat(_http(i))
    first = rec.drain(10)
    assert first == [_http(i) for i in range(10)]
    rest = rec.drain(1000)
    assert rest == [_http(i) for i in range(10, 30)]
    assert rec.drain(5) == []


def test_reset_after_fork_forgets_buffered_samples_and_wake() -> None:
    """A forked child starts with an empty buffer and no link to the parent's flusher."""
    rec = Recorder(capacity=32)
    woken = []
    rec.wake = lambda: woken.append(1)
    for i in range(5):
        rec.add_flat(_http(i))
    rec.reset_after_fork()
    assert len(rec.buf) == 0
    for i in range(40):
        rec.add_flat(_http(i))
    assert woken == []
