"""OTLP/HTTP metrics exporter: the flusher's batches as OpenTelemetry metrics, POSTed as protobuf.

A backend like the stores: the flusher calls :meth:`OTLPBackend.write` with each
aggregated batch, and retries, backs off and reports health for it as for any
other (a receiver that is down delays no other backend and no request). Batches
are added up in memory and exported once per ``interval``: ``write`` posts only
when an export is due, and the flusher asks :meth:`OTLPBackend.due_at` so an
export goes out on time even when no batch comes. A failed post raises
:class:`OTLPExportError`; the flusher hands the same batch back later, which is
not added twice, and the export is tried again with everything since.

The wire format is ``ExportMetricsServiceRequest`` from ``opentelemetry-proto``
(``Content-Type: application/x-protobuf``, POST to ``.../v1/metrics``), with the
semantic conventions for HTTP server metrics:

===================================  =====  ==========================================
metric                               unit   from the batch
===================================  =====  ==========================================
``http.server.request.duration``     s      http rollups: histogram by route, method,
                                            status (``error.type`` = status for 5xx)
``http.server.request.body.size``    By     http size buckets: histogram by route, method
``http.server.response.body.size``   By     http size buckets: histogram by route, method
``http.server.active_requests``      {request}  the in-flight reading: non-monotonic sum
``http.client.request.duration``     s      client rollups (``instrument.requests``)
``instrument.function.duration``     s      call rollups (``@timed``), by function
``instrument.exceptions``            {exception}  exception counts by kind, name, type
``system.*`` / ``process.*``         ...    the latest system reading, as gauges
===================================  =====  ==========================================

Histogram bounds are edges of the kit's fine buckets (:mod:`instrument.core.histogram`),
so the counts are exact: durations at 2**k ms for k = -2..14 (0.25 ms to 16.4 s) and
sizes at 4**k bytes from 64 B to 64 MiB, the bounds of the Prometheus exposition.
Size histograms carry route and method only: the batch counts sizes per (route, method).

Cumulative temporality (the default) keeps running totals per series in this
process, each with the start time it was first seen; delta sends what changed
since the previous export. One Resource per process: ``service.name``,
``service.instance.id`` (host, pid and a random part; new after a fork) and
``host.name``. Headers (credentials) never appear in a repr, a log line or an error.
"""

from __future__ import annotations

import bisect
import logging
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from instrument.core.batch import Batch
from instrument.storage.otlp_metrics import (
    DURATION,
    DURATION_BOUNDS,
    DURATION_LIMITS,
    SIZE_BOUNDS,
    SIZE_EXPONENTS,
    SIZES,
    SYSTEM,
    Point,
    SeriesKey,
    attributes,
    encode,
    metrics_service_pb2,
    version,
)

__all__ = ["DURATION_BOUNDS", "SIZE_BOUNDS", "OTLPBackend", "OTLPExportError", "redact"]

log = logging.getLogger("instrument")
_CLOSE_TIMEOUT = 3.0  # seconds the last export at shutdown may take


class OTLPExportError(Exception):
    """The receiver refused an export or could not be reached; the message holds no secret."""


def redact(url: str) -> str:
    """The endpoint without credentials or query: ``http://host:port/path``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class OTLPBackend:
    """Adds up the flusher's batches and POSTs them as OTLP metrics every ``interval`` seconds."""

    name = "otlp"
    stores_in_flight = True  # the flusher sends in-flight readings even with no samples

    def __init__(self, endpoint: str, *, headers: Mapping[str, str] | Iterable[tuple[str, str]]
                 = (), interval: float = 10.0, temporality: str = "cumulative",
                 service_name: str | None = None, timeout: float = 10.0,
                 host_name: str | None = None) -> None:
        if temporality not in ("cumulative", "delta"):
            raise ValueError(f"temporality must be 'cumulative' or 'delta', not {temporality!r}")
        self.endpoint = endpoint
        self.where = redact(endpoint)
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        self._headers = {str(k): str(v) for k, v in pairs}
        self.interval = float(interval)
        self.temporality = temporality
        self.timeout = float(timeout)
        self.service_name = service_name or "unknown_service:python"
        self.host_name = host_name or socket.gethostname()
        self.exports = 0  # successful posts
        self.failures = 0  # failed posts
        self._reset()

    def __repr__(self) -> str:
        return (f"OTLPBackend(endpoint={self.where!r}, interval={self.interval:g},"
                f" temporality={self.temporality!r}, headers={len(self._headers)} hidden)")

    def _reset(self) -> None:
        self.pid = os.getpid()
        self.instance_id = f"{self.host_name}-{self.pid}-{uuid.uuid4().hex[:12]}"
        now = time.time_ns()
        self._born = now
        self._window_start = now  # delta: start of the window since the previous export
        self._totals: dict[SeriesKey, Point] = {}  # cumulative: since each series began
        self._fresh: dict[SeriesKey, Point] = {}  # what came since the previous export
        self._gauges: dict[SeriesKey, float] = {}
        self._in_flight: int | None = None
        self._in_flight_sent = 0  # delta: the value the previous export left the sum at
        self._last_batch: Batch | None = None  # added already: a retry hands it back
        self._changed = False  # anything added since the previous export
        self._next = time.monotonic() + self.interval

    def reset_after_fork(self) -> None:
        """A forked worker exports its own series, as a new instance, from nothing."""
        self._reset()

    # -- what the flusher calls -------------------------------------------
    def due_at(self) -> float | None:
        """When (``time.monotonic()``) the next export is due, or None with nothing to send."""
        if self.temporality == "delta" and not self._changed:
            return None
        if not self._totals and not self._gauges and self._in_flight is None:
            return None
        return self._next

    def write(self, batch: Batch) -> None:
        if batch is not self._last_batch:
            self._add(batch)
            self._last_batch = batch
        elif batch.in_flight is not None:  # a queued reading may have been renewed in place
            self._in_flight = batch.in_flight.value
        if time.monotonic() >= self._next:
            self.export()

    def close(self) -> None:
        """Send what no export carried yet (one attempt); the receiver may be gone."""
        if not self._changed:
            return
        try:
            self.export(timeout=min(self.timeout, _CLOSE_TIMEOUT))  # exit waits for it
        except OTLPExportError as exc:
            log.warning("instrument: last OTLP export failed: %s", exc)

    # -- adding up --------------------------------------------------------
    def _point(self, key: SeriesKey, width: int, now: int) -> tuple[Point, Point]:
        total = self._totals.get(key)
        if total is None:
            total = self._totals[key] = Point(now, width)
        fresh = self._fresh.get(key)
        if fresh is None:
            fresh = self._fresh[key] = Point(self._window_start, width)
        return total, fresh

    def _add(self, batch: Batch) -> None:
        now = time.time_ns()
        changed = False
        size_sums: dict[tuple[str, str, str, str], float] = {}
        for (_minute, kind, name, method, status), r in batch.rollups.items():
            metric = DURATION.get(kind)
            if metric is None:
                continue
            count, sum_ms, max_ms, hist = r[0], r[2], r[3], r[7]
            attrs = attributes(kind, name, method, status)
            counts = [0] * (len(DURATION_BOUNDS) + 1)
            for b, c in hist.items():
                counts[bisect.bisect_right(DURATION_LIMITS, b)] += c
            for p in self._point((metric, attrs), len(counts), now):
                p.count += count
                p.total += sum_ms / 1000.0
                p.buckets = [a + b for a, b in zip(p.buckets, counts, strict=True)]
                seconds = max_ms / 1000.0
                p.max = seconds if p.max is None else max(p.max, seconds)
            if kind in ("http", "client"):
                for family, value in (("request_size", r[5]), ("response_size", r[6])):
                    skey = (kind, family, str(name), str(method))
                    size_sums[skey] = size_sums.get(skey, 0.0) + float(value or 0)
            changed = True
        sized: dict[SeriesKey, list[int]] = {}
        for (family, kind, name, method, bucket), c in batch.sizes.items():
            metric = SIZES.get((kind, family))
            if metric is None:
                continue
            attrs = attributes(kind, name, method, 0)
            counts = sized.setdefault((metric, attrs), [0] * (len(SIZE_BOUNDS) + 1))
            counts[bisect.bisect_left(SIZE_EXPONENTS, int(bucket))] += c
            size_sums.setdefault((kind, family, str(name), str(method)), 0.0)
        for (kind, family, name, method), value in size_sums.items():
            metric = SIZES[(kind, family)]
            attrs = attributes(kind, name, method, 0)
            counts = sized.get((metric, attrs), [0] * (len(SIZE_BOUNDS) + 1))
            for p in self._point((metric, attrs), len(counts), now):
                p.count += sum(counts)
                p.total += value
                p.buckets = [a + b for a, b in zip(p.buckets, counts, strict=True)]
            changed = True
        for (kind, name, method, exc_name), c in batch.exceptions.items():
            attrs = (("instrument.kind", str(kind)), ("instrument.name", str(name)),
                     *((("http.request.method", str(method)),) if method else ()),
                     ("exception.type", str(exc_name)))
            for p in self._point(("instrument.exceptions", attrs), 0, now):
                p.total += c
            changed = True
        for sample in batch.other.get("system", ()):
            reading = sample[2] if len(sample) > 2 and isinstance(sample[2], dict) else {}
            for column, (metric, _unit, scale, extra, _doc) in SYSTEM.items():
                value = reading.get(column)
                if value is None:
                    continue
                attrs = extra
                if column.startswith("process_") and reading.get("pid") is not None:
                    attrs = (*extra, ("process.pid", int(reading["pid"])))
                self._gauges[(metric, attrs)] = float(value) * scale
                changed = True
        if batch.in_flight is not None:
            if batch.in_flight.value != self._in_flight:
                changed = True
            self._in_flight = batch.in_flight.value
        if changed:
            self._changed = True

    # -- exporting --------------------------------------------------------
    def request(self) -> metrics_service_pb2.ExportMetricsServiceRequest:
        """The ExportMetricsServiceRequest the next export would send."""
        cumulative = self.temporality == "cumulative"
        active = None
        if self._in_flight is not None:
            active = self._in_flight if cumulative else self._in_flight - self._in_flight_sent
        resource = (("service.name", self.service_name), ("service.instance.id", self.instance_id),
                    ("host.name", self.host_name), ("process.pid", self.pid))
        return encode(self._totals if cumulative else self._fresh, self._gauges, active,
                      cumulative=cumulative, window_start=self._window_start, born=self._born,
                      resource=resource)

    def export(self, timeout: float | None = None) -> None:
        """POST everything now; raise :class:`OTLPExportError` when it was not accepted."""
        message = self.request()
        body = message.SerializeToString()
        self._post(body, self.timeout if timeout is None else timeout)
        self.exports += 1
        self._changed = False
        self._next = time.monotonic() + self.interval
        if self.temporality == "delta":
            self._fresh.clear()
            self._window_start = time.time_ns()
            if self._in_flight is not None:
                self._in_flight_sent = self._in_flight
        else:
            self._fresh.clear()  # cumulative sends _totals; _fresh only tracks the window

    def _post(self, body: bytes, timeout: float) -> None:
        headers = {**self._headers, "Content-Type": "application/x-protobuf",
                   "User-Agent": f"instrument-kit/{version()}"}
        req = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                reply = resp.read()
        except urllib.error.HTTPError as exc:
            self.failures += 1
            text = _status_text(exc)
            exc.close()
            raise OTLPExportError(f"HTTP {exc.code} from {self.where}{text}") from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
            self.failures += 1
            reason = getattr(exc, "reason", exc)
            raise OTLPExportError(f"{type(reason).__name__} posting to {self.where}") from None
        if reply:
            self._partial(reply)

    def _partial(self, reply: bytes) -> None:
        response = metrics_service_pb2.ExportMetricsServiceResponse()
        try:
            response.ParseFromString(reply)
        except Exception:  # a receiver answering 2xx with something else still took it
            return
        rejected = response.partial_success.rejected_data_points
        if rejected:
            log.warning("instrument: OTLP receiver %s rejected %d data points: %s", self.where,
                        rejected, response.partial_success.error_message[:200])


def _status_text(exc: urllib.error.HTTPError) -> str:
    """What a refusing receiver said (its Status message, or the body's first bytes)."""
    try:
        body = exc.read(2048)
    except Exception:
        return ""
    if not body:
        return ""
    try:
        from google.rpc import status_pb2  # shipped with opentelemetry-proto's protobuf

        status = status_pb2.Status()
        status.ParseFromString(body)
        if status.message:
            return f": {status.message[:200]}"
    except Exception:
        pass
    text = body.decode("utf-8", "replace")[:200]
    return f": {text}" if text.isprintable() else ""
