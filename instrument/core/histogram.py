"""Log-linear latency buckets fine enough for percentiles within a few percent.

A duration of ``ms`` milliseconds falls in bucket ``floor(log2(ms) * 16)``: 16
buckets per doubling, so neighbouring bounds differ by 2**(1/16) = 4.4 %. A
percentile read back from the buckets is the geometric middle of its bucket,
which is within 2.2 % of any value in that bucket. Buckets are sparse (only
non-empty ones are stored) and cover 1 µs to years, so no layout has to be chosen
per service the way Prometheus' fixed ``le`` lists must be.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

__all__ = ["PER_DOUBLING", "bucket_bounds", "bucket_index", "percentile"]

PER_DOUBLING = 16
_MIN_INDEX = -10 * PER_DOUBLING  # 2**-10 ms, about 1 µs: anything faster lands here
_log2 = math.log2


def bucket_index(ms: float) -> int:
    """The bucket holding a duration in milliseconds."""
    if ms <= 0.0009765625:
        return _MIN_INDEX
    return math.floor(_log2(ms) * PER_DOUBLING)


def bucket_bounds(index: int) -> tuple[float, float]:
    """Lower and upper bound (ms) of a bucket."""
    return 2.0 ** (index / PER_DOUBLING), 2.0 ** ((index + 1) / PER_DOUBLING)


def percentile(buckets: Mapping[int, int] | Iterable[tuple[int, int]], q: float) -> float | None:
    """The ``q``-th percentile (0..100) in ms from bucket counts, or None when empty."""
    items = sorted(buckets.items() if isinstance(buckets, Mapping) else buckets)
    total = sum(c for _, c in items)
    if total <= 0:
        return None
    rank = max(1, math.ceil(total * q / 100.0))
    seen = 0
    for index, count in items:
        seen += count
        if seen >= rank:
            if index <= _MIN_INDEX:
                return 2.0 ** (_MIN_INDEX / PER_DOUBLING)
            return 2.0 ** ((index + 0.5) / PER_DOUBLING)
    return 2.0 ** ((items[-1][0] + 0.5) / PER_DOUBLING)
