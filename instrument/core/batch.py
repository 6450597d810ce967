"""What the flusher hands to every backend: one :class:`Batch` a write, and the shapes in it.

A backend sees batches, never requests: everything it needs to know about the
process that wrote them (its host label, its drop and error counts, the
cardinality limit) travels on the batch as its :class:`Origin`, so storage needs
no access to the runtime that configured it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, NamedTuple

__all__ = ["CALL_WIDTH", "EXEMPLAR_WIDTH", "OVERFLOW", "REQUEST_WIDTH", "SYSTEM_COLUMNS",
           "UNMATCHED", "Batch",
           "InFlight", "Origin", "iso_utc"]

#: Values in one raw request row and one raw call row (see :class:`Batch`).
REQUEST_WIDTH = 12
CALL_WIDTH = 8
#: Values in one exemplar row: (timestamp, minute, request_id, trace_id, method, route, path,
#: query, status_code, duration_ms, ttfb_ms, request_bytes, response_bytes, client,
#: user_agent, exception, reason, pid).
EXEMPLAR_WIDTH = 18

UNMATCHED = "__unmatched__"
OVERFLOW = "__overflow__"

#: Column order of a reading (after ``timestamp``); the ``system_metrics`` table's columns.
SYSTEM_COLUMNS: tuple[str, ...] = (
    "cpu_percent", "memory_percent", "memory_used_mb", "memory_available_mb",
    "disk_usage_percent", "disk_free_gb", "network_bytes_sent", "network_bytes_recv",
    "active_connections", "process_rss_mb", "process_cpu_percent", "process_threads",
    "process_open_files", "kit_buffered", "kit_dropped", "kit_flush_ms", "kit_backend_errors",
    "pid",
)


class InFlight(NamedTuple):
    """One process's reading of its in-flight count, as stored."""

    value: int  # HTTP requests begun and not yet ended
    pid: int
    at: float  # when it was read (Unix time)
    until: float  # readers count it until then, unless a newer reading replaces it


class Origin(NamedTuple):
    """The process a batch comes from, stamped by its flusher when the batch is queued."""

    host: str  # the host label rows are stored under (INSTRUMENT_INSTANCE, else the host name)
    max_names: int  # names kept per kind before the rest fold into OVERFLOW
    run: int  # the flusher (one per configure() and per process): a new one counts from 0
    dropped: int  # samples dropped or given up by this flusher's process since it started
    errors: int  # backend write failures since it started


@dataclass
class Batch:
    """One flush worth of data, shaped for storage.

    ``requests`` rows: (timestamp, endpoint, method, status_code, response_time_ms,
    request_size_bytes, response_size_bytes, error_count, ttfb_ms, exception,
    client_disconnected, pid). ``calls`` rows: (timestamp, kind, name, method,
    status_code, duration_ms, exception, pid). Both are held flat, row after row in
    ``request_values`` (:data:`REQUEST_WIDTH` a row) and ``call_values``
    (:data:`CALL_WIDTH`): a tuple per row made the flusher's batches the bulk of the
    process's garbage-collector work (a young collection every 700 rows), and SQLite
    binds a statement's parameters from one flat slice. ``requests`` and ``calls``
    give them as tuples, for backends that want rows. ``rollups`` map (minute, kind,
    name, method, status) to [count, errors, sum_ms, max_ms, sum_ttfb_ms,
    request_bytes, response_bytes, {bucket: count}]. ``other`` carries samples of
    kinds this module does not aggregate (system readings, log records), by kind.
    ``exceptions`` counts (kind, name, method, exception type) and ``sizes`` counts
    (family, kind, name, method, bucket) with family "request_size" / "response_size"
    and bucket ``b`` holding sizes ``2**(b-1) < n <= 2**b`` (0 holds 0 and 1), for the
    cumulative totals the Prometheus exposition reads. ``in_flight`` is this process's
    reading of its HTTP requests in flight, set by the flusher (:mod:`instrument.core.inflight`).
    ``exemplar_values`` are the requests the flusher kept as exemplars (the slowest and
    failing ones, :mod:`instrument.core.exemplars`), ``error_values`` and ``error_groups``
    the unhandled exceptions as occurrences and groups (:mod:`instrument.core.errors`),
    and ``origin`` says which process and flusher the batch comes from (None for a batch
    built by hand: backends then use the host name and count nothing for the kit).
    """

    request_values: list[Any] = field(default_factory=list)
    call_values: list[Any] = field(default_factory=list)
    rollups: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    other: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    samples: int = 0
    exceptions: dict[tuple[Any, ...], int] = field(default_factory=dict)
    sizes: dict[tuple[Any, ...], int] = field(default_factory=dict)
    in_flight: InFlight | None = None
    origin: Origin | None = None
    #: exemplar rows, flat (:data:`instrument.core.exemplars.EXEMPLAR_WIDTH` values a row)
    exemplar_values: list[Any] = field(default_factory=list)
    #: error occurrence rows, flat (:data:`instrument.core.errors.OCCURRENCE_WIDTH` a row), and
    #: the groups they belong to, one row each (:data:`instrument.core.errors.GROUP_WIDTH`)
    error_values: list[Any] = field(default_factory=list)
    error_groups: list[tuple[Any, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.samples

    @property
    def requests(self) -> list[tuple[Any, ...]]:
        """The raw request rows as tuples (built on each access)."""
        return list(zip(*[iter(self.request_values)] * REQUEST_WIDTH, strict=True))

    @requests.setter
    def requests(self, rows: Iterable[Sequence[Any]]) -> None:
        self.request_values = list(chain.from_iterable(rows))

    @property
    def calls(self) -> list[tuple[Any, ...]]:
        """The raw call rows as tuples (built on each access)."""
        return list(zip(*[iter(self.call_values)] * CALL_WIDTH, strict=True))

    @calls.setter
    def calls(self, rows: Iterable[Sequence[Any]]) -> None:
        self.call_values = list(chain.from_iterable(rows))


def iso_utc(ts: float) -> str:
    """Seconds since the epoch as the ISO 8601 UTC text the tables store."""
    sec = int(ts)
    micro = int((ts - sec) * 1e6)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{micro:06d}"
