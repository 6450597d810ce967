"""The Recorder: bounded, never blocks, counts every drop, wakes the flusher once per crossing."""

from __future__ import annotations

import threading

from instrument._buffer import Recorder


def _sample(i: int) -> tuple[str, int]:
    return ("probe", i)


def test_drops_are_counted_exactly_when_full() -> None:
    """Samples beyond capacity are dropped, counted one by one, and the kept ones are the first."""
    rec = Recorder(capacity=100)
    for i in range(250):
        rec.add(_sample(i))
    assert len(rec.buf) == 100
    assert rec.dropped == 150
    assert [s[1] for s in rec.buf] == list(range(100))


def test_reading_dropped_does_not_advance_the_counter() -> None:
    """The ``dropped`` property reads the counter without changing it."""
    rec = Recorder(capacity=16)
    for i in range(20):
        rec.add(_sample(i))
    assert rec.dropped == 4
    assert rec.dropped == 4


def test_concurrent_appends_lose_nothing_from_the_count() -> None:
    """With 8 threads appending at once, recorded + dropped equals what was sent."""
    threads_n, per_thread, cap = 8, 20_000, 5_000
    rec = Recorder(capacity=cap)
    start = threading.Barrier(threads_n)

    def produce(tid: int) -> None:
        start.wait()
        add = rec.add
        for i in range(per_thread):
            add(("probe", tid, i))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent = threads_n * per_thread
    recorded = len(rec.buf)
    assert recorded + rec.dropped == sent
    # The length check and the append are two steps, so each racing thread may slip one in.
    assert cap <= recorded <= cap + threads_n - 1
    # Each thread's kept samples stay in its own sending order.
    for tid in range(threads_n):
        mine = [s[2] for s in rec.buf if s[1] == tid]
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
            rec.add(("probe", tid, i))

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
    assert len(set(drained)) == len(drained)


def test_high_water_mark_wakes_exactly_once_per_crossing() -> None:
    """The wake callback fires on the append that crosses half capacity, not on others."""
    rec = Recorder(capacity=64)
    wakes: list[int] = []
    rec.wake = lambda: wakes.append(len(rec.buf))
    for i in range(rec.high):
        rec.add(_sample(i))
    assert wakes == []
    rec.add(_sample(rec.high))
    assert wakes == [rec.high + 1]
    for i in range(200):
        rec.add(_sample(i))
    assert len(wakes) == 1
    rec.drain(10**6)
    for i in range(rec.high + 1):
        rec.add(_sample(i))
    assert len(wakes) == 2


def test_resize_moves_the_high_water_mark() -> None:
    """After resize the capacity and the wake threshold follow the new size."""
    rec = Recorder(capacity=1000)
    rec.resize(40)
    assert (rec.cap, rec.high) == (40, 20)
    for i in range(50):
        rec.add(_sample(i))
    assert len(rec.buf) == 40
    assert rec.dropped == 10


def test_drain_returns_samples_in_arrival_order_up_to_the_limit() -> None:
    """drain(limit) pops the oldest samples first and leaves the rest in order."""
    rec = Recorder(capacity=100)
    for i in range(30):
        rec.add(_sample(i))
    first = rec.drain(10)
    assert [s[1] for s in first] == list(range(10))
    rest = rec.drain(1000)
    assert [s[1] for s in rest] == list(range(10, 30))
    assert rec.drain(5) == []


def test_reset_after_fork_forgets_buffered_samples_and_wake() -> None:
    """A forked child starts with an empty buffer and no link to the parent's flusher."""
    rec = Recorder(capacity=32)
    woken = []
    rec.wake = lambda: woken.append(1)
    for i in range(5):
        rec.add(_sample(i))
    rec.reset_after_fork()
    assert len(rec.buf) == 0
    for i in range(40):
        rec.add(_sample(i))
    assert woken == []
