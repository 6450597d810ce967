"""Log-linear latency buckets: percentiles read from buckets stay within 5 % of the exact ones."""

from __future__ import annotations

import math
import random
import time
from collections import Counter

import pytest

from instrument.core.aggregate import Aggregator
from instrument.core.histogram import PER_DOUBLING, bucket_bounds, bucket_index, percentile

QUANTILES = (1, 10, 25, 50, 75, 90, 95, 99, 99.9, 100)


def _exact(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q % of samples at or below it."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * q / 100)) - 1]


def _buckets(values: list[float]) -> Counter[int]:
    return Counter(bucket_index(v) for v in values)


def _lognormal(rng: random.Random, n: int) -> list[float]:
    return [rng.lognormvariate(math.log(40), 1.2) for _ in range(n)]


def _bimodal(rng: random.Random, n: int) -> list[float]:
    """Fast cache hits around 2 ms and slow misses around 400 ms, 70/30."""
    return [rng.lognormvariate(math.log(2), 0.3) if rng.random() < 0.7
            else rng.lognormvariate(math.log(400), 0.4) for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shape", [_lognormal, _bimodal], ids=["lognormal", "bimodal"])
def test_percentiles_from_buckets_are_within_five_percent(seed: int, shape: object) -> None:
    """For lognormal and bimodal latencies every percentile is within 5 % of the exact one."""
    values = shape(random.Random(seed), 20_000)  # type: ignore[operator]
    hist = _buckets(values)
    for q in QUANTILES:
        exact = _exact(values, q)
        approx = percentile(hist, q)
        assert approx is not None
        assert abs(approx - exact) / exact < 0.05, (q, exact, approx)


def test_bimodal_median_is_not_smeared_into_the_gap() -> None:
    """A percentile falls in a populated bucket, never between the two modes."""
    values = [2.0] * 600 + [400.0] * 400
    hist = _buckets(values)
    assert abs(percentile(hist, 50) - 2.0) / 2.0 < 0.05  # type: ignore[operator]
    assert abs(percentile(hist, 61) - 400.0) / 400.0 < 0.05  # type: ignore[operator]


def test_percentile_accepts_pairs_and_mappings_alike() -> None:
    """Bucket counts may come as a mapping or as (bucket, count) rows from SQL."""
    values = _lognormal(random.Random(1), 2000)
    hist = _buckets(values)
    assert percentile(hist, 95) == percentile(list(hist.items()), 95)


def test_empty_buckets_have_no_percentile() -> None:
    """With no samples there is no percentile rather than a made-up zero."""
    assert percentile({}, 50) is None
    assert percentile({3: 0}, 50) is None


def test_every_value_lies_inside_its_bucket() -> None:
    """bucket_bounds(bucket_index(v)) contains v; neighbouring bounds differ by 2**(1/16)."""
    rng = random.Random(3)
    for _ in range(10_000):
        v = 10 ** rng.uniform(-2.5, 6)
        low, high = bucket_bounds(bucket_index(v))
        assert low * (1 - 1e-12) <= v < high * (1 + 1e-12)
        assert math.isclose(high / low, 2 ** (1 / PER_DOUBLING))


def test_sub_microsecond_durations_share_the_lowest_bucket() -> None:
    """Zero and sub-microsecond durations land in one bucket whose percentile is about 1 us."""
    lowest = bucket_index(0.0)
    assert bucket_index(0.0005) == bucket_index(-1.0) == lowest
    assert bucket_index(0.01) > lowest
    assert percentile({lowest: 5}, 50) == pytest.approx(2 ** -10)


def test_merging_bucket_counts_equals_bucketing_the_union() -> None:
    """Histograms from separate batches or processes add up exactly, bucket by bucket."""
    rng = random.Random(4)
    a, b = _lognormal(rng, 3000), _bimodal(rng, 3000)
    assert _buckets(a) + _buckets(b) == _buckets(a + b)
    merged = _buckets(a) + _buckets(b)
    for q in (50, 99):
        assert abs(percentile(merged, q) - _exact(a + b, q)) / _exact(a + b, q) < 0.05  # type: ignore[operator]


def test_aggregator_rollups_use_the_same_buckets() -> None:
    """The buckets the aggregator writes equal bucket_index of each request's duration."""
    rng = random.Random(5)
    t = time.perf_counter()
    durations = _bimodal(rng, 500)
    samples = [("http", t, t + ms / 1000, 0.0, "/h", "GET", 200, 0, 0, None, False)
               for ms in durations]
    batch = Aggregator().aggregate(samples)
    (rollup,) = batch.rollups.values()
    row_ms = [r[4] for r in batch.requests]
    assert rollup[7] == _buckets(row_ms)
    assert sum(rollup[7].values()) == 500
