"""Latency histograms packed into a BLOB, and the arithmetic that merges them without unpacking.

The blob is a little-endian ``array('q')``: ``[lowest bucket index, count,
count, ...]``, dense from the lowest to the highest non-empty bucket (bucket
layout in :mod:`instrument.core.histogram`). Both stores keep the tiers' histograms
this way, and readers sum them as big integers with a 64-bit field per bucket
(:func:`hist_value`).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Mapping

__all__ = ["decode_hist", "encode_hist", "hist_low", "hist_pairs", "hist_value", "merge_blobs",
           "sum_blobs"]

_SWAP = sys.byteorder != "little"
_HEADER = struct.Struct("<q")


def encode_hist(buckets: Mapping[int, int]) -> bytes:
    """Pack sparse {bucket: count} into the dense blob layout."""
    lo = min(buckets)
    counts = [0] * (max(buckets) - lo + 1)
    for index, count in buckets.items():
        counts[index - lo] += count
    arr = array("q", [lo])
    arr.extend(counts)
    if _SWAP:
        arr.byteswap()
    return arr.tobytes()


def decode_hist(blob: bytes) -> tuple[int, list[int]]:
    """The lowest bucket index and the dense counts from it upwards."""
    arr = array("q")
    arr.frombytes(blob)
    if _SWAP:
        arr.byteswap()
    return arr[0], arr[1:].tolist()


def hist_low(blob: bytes) -> int:
    """The lowest bucket index a blob holds."""
    return int(_HEADER.unpack_from(blob)[0])


def hist_value(blob: bytes, base: int) -> int:
    """The blob's counts as one integer with a 64-bit field per bucket from ``base`` up.

    Adding two such integers adds every bucket at once (counts never carry into the
    next field), so merging hundreds of histograms costs hundreds of big-integer
    additions instead of tens of thousands of Python-level ones.
    """
    lo = _HEADER.unpack_from(blob)[0]
    return (int.from_bytes(blob, "little") >> 64) << ((lo - base) * 64)


def hist_pairs(value: int, base: int) -> list[tuple[int, int]]:
    """(bucket, count) pairs, non-empty only, of a :func:`hist_value` sum."""
    arr = array("q")
    arr.frombytes(value.to_bytes((value.bit_length() + 63) // 64 * 8, "little"))
    if _SWAP:
        arr.byteswap()
    return [(base + i, c) for i, c in enumerate(arr) if c]


def merge_blobs(old: bytes | None, new: bytes | None) -> bytes | None:
    # Called by SQLite for every histogram upsert that meets a stored row: the counts
    # are read past the header through memoryviews (no copy, no shift of the lower one).
    if old is None:
        return new
    if new is None:
        return old
    (a,), (b,) = _HEADER.unpack_from(old), _HEADER.unpack_from(new)
    if a > b:
        old, new, a, b = new, old, b, a
    value = int.from_bytes(memoryview(old)[8:], "little") + (
        int.from_bytes(memoryview(new)[8:], "little") << (64 * (b - a)))
    return old[:8] + value.to_bytes((value.bit_length() + 63) // 64 * 8, "little")


def sum_blobs(blobs: list[bytes]) -> bytes:
    lows = [_HEADER.unpack_from(b)[0] for b in blobs]
    lo = min(lows)
    value = sum(int.from_bytes(memoryview(b)[8:], "little") << (64 * (low - lo))
                for low, b in zip(lows, blobs, strict=True))
    return blobs[lows.index(lo)][:8] + value.to_bytes((value.bit_length() + 63) // 64 * 8,
                                                      "little")
