"""Rows per second into PostgreSQL (and SQLite, for scale) through the kit's backends.

Batches are what a flusher hands a backend: ``--batch`` requests over
``--routes`` routes, aggregated into raw rows, per-minute rollups, coarse tiers,
histograms and cumulative totals, each batch one transaction (``COPY`` for raw
rows, pipelined upserts for the rest). Reported per store: requests (raw rows)
per second with one writer, the same with two writer processes (two hosts of a
fleet, each its own ``host``), and with raw rows off (``INSTRUMENT_RAW_ROWS=false``:
rollups and totals only).

Without ``--url`` a throwaway cluster is started (``initdb`` + ``pg_ctl`` from
the Debian ``postgresql`` package, fsync off as in tests; give ``--url`` to
measure a real server). ``--quick`` writes a few small batches: it only proves
the script works.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import parser, print_table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.pg_cluster

from instrument.core.aggregate import Aggregator
from instrument.core.batch import Batch


def batches(total: int, size: int, routes: int, raw: bool, seed: int = 1) -> list[Batch]:
    rng = random.Random(seed)
    agg = Aggregator(raw_rows=raw)
    out = []
    t0 = time.perf_counter()
    for start in range(0, total, size):
        samples = []
        for i in range(start, min(total, start + size)):
            ms = rng.lognormvariate(3.0, 0.8)
            t = t0 + i * 0.0005
            samples.append(("http", t, t + ms / 1000, t + ms / 2000,
                            f"/api/r{rng.randrange(routes)}/{{id}}", "GET",
                            500 if rng.random() < 0.01 else 200, 120, 2048,
                            None, False))
        out.append(agg.aggregate(samples))
    return out


def _backend(kind: str, target: str, host: str) -> Any:
    if kind == "postgresql":
        from instrument.backends.postgresql import PostgreSQLBackend

        return PostgreSQLBackend(target, instance=host)
    from instrument.backends.sqlite import SQLiteBackend

    return SQLiteBackend(target)


def write_all(kind: str, target: str, work: list[Batch], host: str = "bench-1") -> float:
    """Seconds to write every batch (after one warm-up write that creates the schema)."""
    backend = _backend(kind, target, host)
    backend.write(Batch())
    t0 = time.perf_counter()
    for b in work:
        backend.write(b)
    seconds = time.perf_counter() - t0
    backend.close()
    return seconds


def _writer(args: tuple[str, str, int, int, int, str]) -> float:
    kind, target, total, size, routes, host = args
    return write_all(kind, target, batches(total, size, routes, True, seed=hash(host) % 1000),
                     host)


def measure(kind: str, target: str, total: int, size: int, routes: int) -> dict[str, Any]:
    work = batches(total, size, routes, raw=True)
    one = write_all(kind, target, work)
    lean = write_all(kind, target, batches(total, size, routes, raw=False), "bench-lean")
    ctx = multiprocessing.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(2) as pool:
        pool.map(_writer, [(kind, target, total, size, routes, f"bench-w{i}") for i in range(2)])
    two = time.perf_counter() - t0
    return {"requests": total, "batch": size, "routes": routes,
            "rows_per_s_1_writer": total / one, "rows_per_s_2_writers": 2 * total / two,
            "requests_per_s_rollups_only": total / lean, "ms_per_batch": one / len(work) * 1e3}


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.pg_cluster import pg_cluster

    with pg_cluster() as cluster:
        yield cluster.new_schema()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--url", help="postgresql:// URL of a server to measure (default: throwaway)")
    p.add_argument("--requests", type=int, default=None, help="requests per writer")
    p.add_argument("--batch", type=int, default=None, help="requests per batch (one flush)")
    p.add_argument("--routes", type=int, default=50)
    args = p.parse_args(argv)
    total = args.requests or (3_000 if args.quick else 200_000)
    size = args.batch or (1_000 if args.quick else 5_000)
    results: dict[str, Any] = {}
    with postgres(args.url) as url:
        results["postgresql"] = measure("postgresql", url, total, size, args.routes)
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = measure("sqlite", os.path.join(tmp, "m.db"), total, size,
                                    args.routes)
    rows = [[k, r["rows_per_s_1_writer"], r["rows_per_s_2_writers"],
             r["requests_per_s_rollups_only"], r["ms_per_batch"]] for k, r in results.items()]
    print_table(["store", "rows/s 1 writer", "rows/s 2 writers", "req/s rollups only",
                 "ms per batch"], rows,
                title=f"{total} requests per writer in batches of {size}, {args.routes} routes")
    write_json(args.json, {"benchmark": "postgres", "quick": args.quick, **results})
    return results


if __name__ == "__main__":
    main()
