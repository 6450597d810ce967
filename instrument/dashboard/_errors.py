"""The error endpoints: ``errors`` (the groups of a range) and ``errors/{group_id}``.

A group is a bug, fingerprinted by the flusher (:mod:`instrument.core.errors`);
the list says how often each was seen in the range, where, and when (a
sparkline), and a group's page adds its latest traceback and recent occurrences,
each with the request id that leads to its request page.
"""

from __future__ import annotations

import re
from typing import Any

from instrument.core.batch import iso_utc
from instrument.dashboard import _params as p
from instrument.dashboard._http import BadRequest, Response, json_response, problem
from instrument.dashboard._pgstore import has_table
from instrument.storage.error_query import group_detail, list_groups

__all__ = ["error_detail", "error_list"]

_GROUP_ID = re.compile(r"[0-9a-f]{16}")


def error_list(q: dict[str, str], conn: Any, since: float, until: float) -> Response:
    if not has_table(conn, "error_groups"):
        return json_response({"available": False, "groups": []})
    step, groups = list_groups(
        conn, since, until, route=p.text(q, "route", max_length=1000),
        method=p.text(q, "method", max_length=20),
        limit=p.integer(q, "limit", 100, low=1, high=1000) or 100)
    return json_response({"available": True, "from": iso_utc(since), "to": iso_utc(until),
                          "bucket_seconds": step, "groups": groups})


def error_detail(group_id: str, conn: Any, since: float, until: float) -> Response:
    if not _GROUP_ID.fullmatch(group_id):
        raise BadRequest("That is not an error group id (16 hexadecimal digits).")
    group = group_detail(conn, group_id, since, until) if has_table(conn, "error_groups") else None
    if group is None:
        return problem(404, f"No error group {group_id!r}.")
    return json_response({"from": iso_utc(since), "to": iso_utc(until), "group": group})
