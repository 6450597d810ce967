"""A batch shaped into table rows: what SQLite and PostgreSQL write alike.

Each store has its own statements (multi-row ``INSERT``s and upserts for SQLite,
``COPY`` and array upserts for PostgreSQL); the rows they bind come from here,
so the two stores cannot drift apart in what a column holds.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from instrument.core.batch import SYSTEM_COLUMNS, Batch, iso_utc
from instrument.storage.histblob import sum_blobs

__all__ = ["COARSE_PERIODS", "app_rows", "log_rows", "profile_rows", "scrub", "system_rows",
           "tier_rows"]

#: Periods (seconds) of the coarse tiers; the minute tier is ``metric_rollups`` itself.
COARSE_PERIODS = (600, 3600, 21600)


_PACK_INTO = struct.Struct("<q").pack_into


def tier_rows(rollups: Mapping[tuple[Any, ...], list[Any]]
              ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Coarse rollup rows and histogram rows (every tier) for one batch's minute rollups.

    A route's buckets are summed over status codes per minute as dicts and packed
    once into the minute's blob; a coarser period that only this minute of the batch
    falls in (the usual case) takes that same blob, and one that several minutes fall
    in adds them as :func:`hist_value`-style integers (one addition merges every bucket).
    """
    coarse: dict[tuple[Any, ...], list[Any]] = {}
    minutes: dict[tuple[Any, ...], dict[int, int]] = {}
    for (minute, kind, name, method, status), v in rollups.items():
        for period in COARSE_PERIODS:
            key = (period, minute - minute % period, kind, name, method, status)
            h = coarse.get(key)
            if h is None:
                coarse[key] = v[:7]
            else:
                h[0] += v[0]
                h[1] += v[1]
                h[2] += v[2]
                h[3] = max(h[3], v[3])
                h[4] += v[4]
                h[5] += v[5]
                h[6] += v[6]
        mkey = (minute, kind, name, method)
        acc = minutes.get(mkey)
        if acc is None:
            minutes[mkey] = dict(v[7])
        else:
            for bucket, count in v[7].items():
                acc[bucket] = acc.get(bucket, 0) + count
    tiers: dict[tuple[Any, ...], list[bytes]] = {}
    pack = _PACK_INTO
    for (minute, kind, name, method), hist in minutes.items():
        if not hist:
            continue
        lo = min(hist)
        dense = bytearray(8 * (max(hist) - lo + 2))  # the header, then lo .. max
        pack(dense, 0, lo)
        for bucket, count in hist.items():
            pack(dense, 8 * (bucket - lo + 1), count)
        blob = bytes(dense)
        for period in (60, *COARSE_PERIODS):
            hkey = (period, minute - minute % period, kind, name, method)
            same = tiers.get(hkey)
            if same is None:
                tiers[hkey] = [blob]
            else:
                same.append(blob)
    return ([(*k, *v) for k, v in coarse.items()],
            [(*k, blobs[0] if len(blobs) == 1 else sum_blobs(blobs))
             for k, blobs in tiers.items()])


def log_rows(samples: Sequence[tuple[Any, ...]], pid: int | None = None) -> list[tuple[Any, ...]]:
    """Turn ``("log", created, levelno, levelname, logger, message, exception, extra,
    request_id, route, method)`` samples into ``logs`` rows."""
    pid = os.getpid() if pid is None else pid
    rows = []
    sec, prefix = -1, ""
    for s in samples:  # strftime once per second of timestamps, as _aggregate's clock does
        ts = s[1]
        whole = int(ts)
        if whole != sec:
            sec, prefix = whole, iso_utc(whole)[:-7]
        rows.append((f"{prefix}.{int((ts - whole) * 1e6):06d}", s[3], s[2], s[4], s[5], s[6],
                     s[7], s[8], s[9], s[10], pid))
    return rows


def system_rows(samples: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``system_metrics`` rows (timestamp, then :data:`SYSTEM_COLUMNS`) of ``("system", ts,
    {column: value})`` samples; a column a reading lacks is None."""
    return [(iso_utc(s[1]), *(s[2].get(c) for c in SYSTEM_COLUMNS)) for s in samples]


def app_rows(samples: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``app_metrics`` rows (timestamp, name, kind, value, pid) of ``("app", ...)`` samples."""
    return [(iso_utc(s[1]), s[2], s[3], s[4], s[5]) for s in samples]


def profile_rows(samples: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``profile_stacks`` rows (minute, route, method, stack, samples, pid) of ``("profile",
    ...)`` samples (the aggregator adds the pid; one built by hand may come without)."""
    return [(s[1], s[2], s[3], s[4], s[5], s[6] if len(s) > 6 else None) for s in samples]


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, tuple):
        return tuple(_escaped(v) for v in value)
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    return value


def scrub(batch: Batch) -> None:
    """Escape, in place, text UTF-8 cannot encode (``'\\udcff'`` becomes ``'\\\\udcff'``)."""
    batch.request_values = _escaped(batch.request_values)
    batch.call_values = _escaped(batch.call_values)
    batch.rollups = _escaped(batch.rollups)
    batch.other = _escaped(batch.other)
    batch.exceptions = _escaped(batch.exceptions)
    batch.sizes = _escaped(batch.sizes)
    batch.exemplar_values = _escaped(batch.exemplar_values)
    batch.error_values = _escaped(batch.error_values)
    batch.error_groups = _escaped(batch.error_groups)
