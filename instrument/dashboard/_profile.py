"""``GET profile?route=&method=&from=&to=&format=``: the profiler's stacks for a route.

The default answer is the collapsed text flamegraph.pl and speedscope import
(``module:function;module:function count`` a line); ``format=json`` gives the
same stacks as JSON for the dashboard's flame graph; its ``available`` is false only
for a store without the ``profile_stacks`` table (older than the profiler).
"""

from __future__ import annotations

from typing import Any

from instrument.core.batch import iso_utc
from instrument.dashboard import _params as p
from instrument.dashboard._http import Response, json_response
from instrument.dashboard._pgstore import has_table
from instrument.storage.profile_query import profile_stacks

__all__ = ["profile"]


def profile(q: dict[str, str], conn: Any, since: float, until: float) -> Response:
    route = p.text(q, "route", max_length=1000)
    method = p.text(q, "method", max_length=16)
    fmt = p.choice(q, "format", ("collapsed", "json"), "collapsed")
    limit = p.integer(q, "limit", 5000, low=1, high=50_000) or 5000
    available = has_table(conn, "profile_stacks")
    stacks = profile_stacks(conn, route=route, method=method, since=since, until=until,
                            limit=limit) if available else []
    if fmt == "json":
        return json_response({
            "available": available, "route": route, "method": method,
            "from": iso_utc(since), "to": iso_utc(until), "total": sum(n for _, n in stacks),
            "stacks": [{"stack": s, "samples": n} for s, n in stacks]})
    body = "".join(f"{s} {n}\n" for s, n in stacks).encode("utf-8", "backslashreplace")
    return Response(200, body, "text/plain; charset=utf-8")
