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
from typing import Any
from urllib.parse import urlsplit

from instrument._errors import missing_extra
from instrument.core.batch import UNMATCHED, Batch
from instrument.core.histogram import PER_DOUBLING

try:
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.metrics.v1 import metrics_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("opentelemetry-proto", "otlp") from exc

__all__ = ["DURATION_BOUNDS", "SIZE_BOUNDS", "OTLPBackend", "OTLPExportError", "redact"]

log = logging.getLogger("instrument")
_CLOSE_TIMEOUT = 3.0  # seconds the last export at shutdown may take

#: Explicit bounds in seconds: 2**k ms for k = -2..14, edges of the fine latency buckets.
DURATION_BOUNDS = tuple(2.0 ** k / 1000.0 for k in range(-2, 15))
_DURATION_LIMITS = tuple(PER_DOUBLING * k for k in range(-2, 15))  # fine index < limit
#: Explicit bounds in bytes: 4**k from 64 B to 64 MiB (size bucket b holds 2**(b-1) < n <= 2**b).
SIZE_BOUNDS = tuple(float(2 ** e) for e in range(6, 27, 2))
_SIZE_EXPONENTS = tuple(range(6, 27, 2))

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA

_HIST = "histogram"
_SUM = "sum"  # monotonic
_UPDOWN = "updown"  # non-monotonic sum
_GAUGE = "gauge"

#: metric name -> (kind of point, unit, description)
METRICS: dict[str, tuple[str, str, str]] = {
    "http.server.request.duration": (_HIST, "s", "Duration of HTTP server requests."),
    "http.server.request.body.size": (_HIST, "By", "Size of HTTP server request bodies."),
    "http.server.response.body.size": (_HIST, "By", "Size of HTTP server response bodies."),
    "http.server.active_requests": (_UPDOWN, "{request}",
                                    "Number of active HTTP server requests."),
    "http.client.request.duration": (_HIST, "s", "Duration of HTTP client requests."),
    "http.client.request.body.size": (_HIST, "By", "Size of HTTP client request bodies."),
    "http.client.response.body.size": (_HIST, "By", "Size of HTTP client response bodies."),
    "instrument.function.duration": (_HIST, "s", "Duration of calls of decorated functions."),
    "instrument.exceptions": (_SUM, "{exception}",
                              "Exceptions raised by requests, outgoing calls and functions."),
}
_DURATION = {"http": "http.server.request.duration", "client": "http.client.request.duration",
             "call": "instrument.function.duration"}
_SIZES = {("http", "request_size"): "http.server.request.body.size",
          ("http", "response_size"): "http.server.response.body.size",
          ("client", "request_size"): "http.client.request.body.size",
          ("client", "response_size"): "http.client.response.body.size"}

_MB = 1024.0 * 1024.0
#: system reading column -> (metric, unit, scale, extra attributes, description)
_SYSTEM: dict[str, tuple[str, str, float, tuple[tuple[str, Any], ...], str]] = {
    "cpu_percent": ("system.cpu.utilization", "1", 0.01, (), "Machine CPU use (0-1)."),
    "memory_percent": ("system.memory.utilization", "1", 0.01, (),
                       "Machine memory in use (0-1)."),
    "memory_used_mb": ("system.memory.usage", "By", _MB, (("system.memory.state", "used"),),
                       "Machine memory in use."),
    "disk_usage_percent": ("system.filesystem.utilization", "1", 0.01, (),
                           "Share of the watched filesystem in use (0-1)."),
    "process_rss_mb": ("process.memory.usage", "By", _MB, (), "Resident memory of the process."),
    "process_cpu_percent": ("process.cpu.utilization", "1", 0.01, (),
                            "CPU use of the process (1 = one core)."),
    "process_threads": ("process.thread.count", "{thread}", 1.0, (), "Threads of the process."),
    "process_open_files": ("process.open_file_descriptor.count", "{file_descriptor}", 1.0, (),
                           "Open files of the process."),
}


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


Attrs = tuple[tuple[str, Any], ...]
SeriesKey = tuple[str, Attrs]


class _Point:
    """One series' accumulated value: a histogram's count, sum, buckets and max, or a number."""

    __slots__ = ("buckets", "count", "max", "start", "total")

    def __init__(self, start: int, width: int) -> None:
        self.start = start
        self.count = 0
        self.total = 0.0  # histogram sum, or the value of a sum / gauge
        self.buckets = [0] * width
        self.max: float | None = None


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
        self._totals: dict[SeriesKey, _Point] = {}  # cumulative: since each series began
        self._fresh: dict[SeriesKey, _Point] = {}  # what came since the previous export
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
    def _point(self, key: SeriesKey, width: int, now: int) -> tuple[_Point, _Point]:
        total = self._totals.get(key)
        if total is None:
            total = self._totals[key] = _Point(now, width)
        fresh = self._fresh.get(key)
        if fresh is None:
            fresh = self._fresh[key] = _Point(self._window_start, width)
        return total, fresh

    def _add(self, batch: Batch) -> None:
        now = time.time_ns()
        changed = False
        size_sums: dict[tuple[str, str, str, str], float] = {}
        for (_minute, kind, name, method, status), r in batch.rollups.items():
            metric = _DURATION.get(kind)
            if metric is None:
                continue
            count, sum_ms, max_ms, hist = r[0], r[2], r[3], r[7]
            attrs = _attributes(kind, name, method, status)
            counts = [0] * (len(DURATION_BOUNDS) + 1)
            for b, c in hist.items():
                counts[bisect.bisect_right(_DURATION_LIMITS, b)] += c
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
            metric = _SIZES.get((kind, family))
            if metric is None:
                continue
            attrs = _attributes(kind, name, method, 0)
            counts = sized.setdefault((metric, attrs), [0] * (len(SIZE_BOUNDS) + 1))
            counts[bisect.bisect_left(_SIZE_EXPONENTS, int(bucket))] += c
            size_sums.setdefault((kind, family, str(name), str(method)), 0.0)
        for (kind, family, name, method), value in size_sums.items():
            metric = _SIZES[(kind, family)]
            attrs = _attributes(kind, name, method, 0)
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
            for column, (metric, _unit, scale, extra, _doc) in _SYSTEM.items():
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
        now = time.time_ns()
        cumulative = self.temporality == "cumulative"
        temporality = CUMULATIVE if cumulative else DELTA
        points = self._totals if cumulative else self._fresh
        metrics: dict[str, metrics_pb2.Metric] = {}

        def metric(name: str, unit: str | None = None, doc: str | None = None
                   ) -> metrics_pb2.Metric:
            m = metrics.get(name)
            if m is None:
                kind, default_unit, default_doc = METRICS.get(name, (_GAUGE, "", ""))
                m = metrics[name] = metrics_pb2.Metric(
                    name=name, unit=unit if unit is not None else default_unit,
                    description=doc if doc is not None else default_doc)
                if kind == _HIST:
                    m.histogram.aggregation_temporality = temporality
                elif kind in (_SUM, _UPDOWN):
                    m.sum.aggregation_temporality = temporality
                    m.sum.is_monotonic = kind == _SUM
            return m

        for (name, attrs), p in sorted(points.items(), key=_order):
            kind = METRICS[name][0]
            m = metric(name)
            start = p.start if cumulative else self._window_start
            if kind == _HIST:
                hp = m.histogram.data_points.add(
                    start_time_unix_nano=start, time_unix_nano=now, count=p.count, sum=p.total,
                    bucket_counts=p.buckets,
                    explicit_bounds=DURATION_BOUNDS if name.endswith("duration") else SIZE_BOUNDS)
                if p.max is not None and p.count:
                    hp.max = p.max
                hp.attributes.extend(_key_values(attrs))
            else:
                sp = m.sum.data_points.add(start_time_unix_nano=start, time_unix_nano=now,
                                           as_int=int(p.total))
                sp.attributes.extend(_key_values(attrs))
        if self._in_flight is not None:
            m = metric("http.server.active_requests")
            active = self._in_flight if cumulative else self._in_flight - self._in_flight_sent
            m.sum.data_points.add(start_time_unix_nano=self._born if cumulative
                                  else self._window_start, time_unix_nano=now, as_int=active)
        for (name, attrs), value in sorted(self._gauges.items(), key=_order):
            column = next(c for c, spec in _SYSTEM.items() if spec[0] == name)
            _, unit, _, _, doc = _SYSTEM[column]
            gp = metric(name, unit, doc).gauge.data_points.add(time_unix_nano=now,
                                                                 as_double=value)
            gp.attributes.extend(_key_values(attrs))
        resource = resource_pb2.Resource(attributes=_key_values((
            ("service.name", self.service_name), ("service.instance.id", self.instance_id),
            ("host.name", self.host_name), ("process.pid", self.pid),
            ("telemetry.sdk.name", "instrument-kit"), ("telemetry.sdk.language", "python"))))
        scope = common_pb2.InstrumentationScope(name="instrument", version=_version())
        return metrics_service_pb2.ExportMetricsServiceRequest(resource_metrics=[
            metrics_pb2.ResourceMetrics(resource=resource, scope_metrics=[
                metrics_pb2.ScopeMetrics(scope=scope, metrics=list(metrics.values()))])])

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
                   "User-Agent": f"instrument-kit/{_version()}"}
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


def _attributes(kind: str, name: Any, method: Any, status: Any) -> Attrs:
    """Semantic-convention attributes of one series (status 0: none recorded)."""
    name = str(name)
    out: list[tuple[str, Any]] = []
    if kind == "http":
        if name != UNMATCHED:
            out.append(("http.route", name))
        out.append(("http.request.method", str(method) or "_OTHER"))
    elif kind == "client":
        host, _, template = name.partition("/")
        out.append(("server.address", host))
        if template:
            out.append(("url.template", "/" + template))
        out.append(("http.request.method", str(method) or "_OTHER"))
    else:
        out.append(("code.function.name", name))
    code = int(status or 0)
    if code:
        out.append(("http.response.status_code", code))
        if code >= 500:
            out.append(("error.type", str(code)))
    return tuple(out)


def _key_values(attrs: Iterable[tuple[str, Any]]) -> list[common_pb2.KeyValue]:
    out = []
    for key, value in attrs:
        if isinstance(value, bool):
            any_value = common_pb2.AnyValue(bool_value=value)
        elif isinstance(value, int):
            any_value = common_pb2.AnyValue(int_value=value)
        elif isinstance(value, float):
            any_value = common_pb2.AnyValue(double_value=value)
        else:
            any_value = common_pb2.AnyValue(string_value=str(value))
        out.append(common_pb2.KeyValue(key=key, value=any_value))
    return out


def _order(item: tuple[SeriesKey, Any]) -> tuple[str, str]:
    (name, attrs), _ = item
    return name, repr(attrs)


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


_VERSION: list[str] = []


def _version() -> str:
    if not _VERSION:
        try:
            from importlib.metadata import version

            _VERSION.append(version("instrument-kit"))
        except Exception:
            _VERSION.append("0")
    return _VERSION[0]
