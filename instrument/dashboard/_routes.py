"""One route's page data: ``routes/{route}?method=&from=&to=``.

Everything a route page shows in one answer: its totals and percentiles over the
range (from the rollups, as the overview's table), its latency histogram (the
rollup buckets, merged to one bar per doubling), its status mix, its slowest and
failing exemplar requests, its error groups, and whether the profiler has samples
of it.
"""

from __future__ import annotations

import math
from typing import Any

from instrument.core.batch import iso_utc
from instrument.core.histogram import bucket_bounds
from instrument.dashboard._http import Response, json_response, problem
from instrument.dashboard._pgstore import has_table
from instrument.storage import queries
from instrument.storage.error_query import list_groups
from instrument.storage.exemplar_query import find_requests
from instrument.storage.histblob import hist_pairs
from instrument.storage.tiers import bounds, histograms, plan

__all__ = ["route_detail"]


def _histogram(conn: Any, kind: str, route: str, method: str | None, lo: float,
               hi: float) -> list[dict[str, float]]:
    """Counts per doubling of latency (upper bound in ms), ascending, empty ones left out."""
    bars: dict[float, int] = {}
    for (_, meth), (base, value) in histograms(conn, kind, plan(*bounds(lo, hi)),
                                                  route).items():
        if method is not None and meth != method:  # (read for this route only: by method)
            continue
        for bucket, count in hist_pairs(value, base):
            upper = 2.0 ** math.ceil(math.log2(bucket_bounds(bucket)[1]) - 1e-9)
            bars[upper] = bars.get(upper, 0) + count
    return [{"le_ms": le, "count": n} for le, n in sorted(bars.items())]


def route_detail(route: str, method: str | None, kind: str, conn: Any, since: float,
                 until: float, stats_of: Any) -> Response:
    """``stats_of``: the API's own naming of one per-route row (``_route_stats``)."""
    found = [e for e in queries.api_stats(conn, since, until, kind=kind, top=1,
                                          route=route)["endpoints"]
             if e["endpoint"] == route and (method is None or e["method"] == method)]
    if not found:
        return problem(404, f"No {kind} route {route!r}"
                            + (f" with method {method!r}" if method else "")
                            + " was seen in this range.")
    found.sort(key=lambda e: -e["request_count"])
    entry = stats_of(found[0])
    methods = sorted({e["method"] for e in found})
    method = method or found[0]["method"]
    codes = entry.pop("status_codes")
    exemplars = has_table(conn, "request_exemplars")
    slowest = find_requests(conn, route=route, method=method, since=since, until=until,
                            reason="slow", order="slowest", limit=10) if exemplars else []
    failing = find_requests(conn, route=route, method=method, since=since, until=until,
                            reason="error", order="newest", limit=10) if exemplars else []
    groups: list[dict[str, Any]] = []
    if has_table(conn, "error_groups"):
        groups = list_groups(conn, since, until, route=route, method=method, limit=20)[1]
    samples = 0
    if has_table(conn, "profile_stacks"):
        row = conn.execute("SELECT sum(samples) FROM profile_stacks WHERE route = ? AND method = ?"
                           " AND minute >= ? AND minute < ?",
                           (route, method, int(since // 60) * 60, until)).fetchone()
        samples = int(row[0] or 0)
    return json_response({
        "route": route, "method": method, "methods": methods, "kind": kind,
        "from": iso_utc(since), "to": iso_utc(until), "stats": entry, "status_codes": codes,
        "histogram": _histogram(conn, kind, route, method, since, until),
        "slowest": slowest, "failing": failing, "error_groups": groups,
        "profile": {"available": samples > 0, "samples": samples},
    })
