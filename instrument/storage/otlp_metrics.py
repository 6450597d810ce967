"""What the kit's aggregates are called in OpenTelemetry, and how they are put on the wire.

The metric catalogue (semantic-convention names, units, descriptions), the bucket
bounds (edges of the kit's fine histogram buckets, so counts stay exact), the
attributes of one series, and :func:`encode`, which builds the
``ExportMetricsServiceRequest`` from the points :mod:`instrument.storage.otlp` adds up.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from instrument._errors import missing_extra
from instrument.core.batch import UNMATCHED
from instrument.core.histogram import PER_DOUBLING

try:
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.metrics.v1 import metrics_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("opentelemetry-proto", "otlp") from exc

#: Explicit bounds in seconds: 2**k ms for k = -2..14, edges of the fine latency buckets.
DURATION_BOUNDS = tuple(2.0 ** k / 1000.0 for k in range(-2, 15))
DURATION_LIMITS = tuple(PER_DOUBLING * k for k in range(-2, 15))  # fine index < limit
#: Explicit bounds in bytes: 4**k from 64 B to 64 MiB (size bucket b holds 2**(b-1) < n <= 2**b).
SIZE_BOUNDS = tuple(float(2 ** e) for e in range(6, 27, 2))
SIZE_EXPONENTS = tuple(range(6, 27, 2))

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA

HIST = "histogram"
SUM = "sum"  # monotonic
UPDOWN = "updown"  # non-monotonic sum
GAUGE = "gauge"

#: metric name -> (kind of point, unit, description)
METRICS: dict[str, tuple[str, str, str]] = {
    "http.server.request.duration": (HIST, "s", "Duration of HTTP server requests."),
    "http.server.request.body.size": (HIST, "By", "Size of HTTP server request bodies."),
    "http.server.response.body.size": (HIST, "By", "Size of HTTP server response bodies."),
    "http.server.active_requests": (UPDOWN, "{request}",
                                    "Number of active HTTP server requests."),
    "http.client.request.duration": (HIST, "s", "Duration of HTTP client requests."),
    "http.client.request.body.size": (HIST, "By", "Size of HTTP client request bodies."),
    "http.client.response.body.size": (HIST, "By", "Size of HTTP client response bodies."),
    "instrument.function.duration": (HIST, "s", "Duration of calls of decorated functions."),
    "instrument.exceptions": (SUM, "{exception}",
                              "Exceptions raised by requests, outgoing calls and functions."),
}
DURATION = {"http": "http.server.request.duration", "client": "http.client.request.duration",
             "call": "instrument.function.duration"}
SIZES = {("http", "request_size"): "http.server.request.body.size",
          ("http", "response_size"): "http.server.response.body.size",
          ("client", "request_size"): "http.client.request.body.size",
          ("client", "response_size"): "http.client.response.body.size"}

_MB = 1024.0 * 1024.0
#: system reading column -> (metric, unit, scale, extra attributes, description)
SYSTEM: dict[str, tuple[str, str, float, tuple[tuple[str, Any], ...], str]] = {
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


Attrs = tuple[tuple[str, Any], ...]
SeriesKey = tuple[str, Attrs]


class Point:
    """One series' accumulated value: a histogram's count, sum, buckets and max, or a number."""

    __slots__ = ("buckets", "count", "max", "start", "total")

    def __init__(self, start: int, width: int) -> None:
        self.start = start
        self.count = 0
        self.total = 0.0  # histogram sum, or the value of a sum / gauge
        self.buckets = [0] * width
        self.max: float | None = None


def encode(points: Mapping[SeriesKey, Point], gauges: Mapping[SeriesKey, float],
           active: int | None, *, cumulative: bool, window_start: int, born: int,
           resource: Attrs) -> metrics_service_pb2.ExportMetricsServiceRequest:
    """One ExportMetricsServiceRequest: histograms and sums from ``points``, the system
    readings from ``gauges``, ``active`` requests (None: no reading) and the resource."""
    now = time.time_ns()
    temporality = CUMULATIVE if cumulative else DELTA
    metrics: dict[str, metrics_pb2.Metric] = {}

    def metric(name: str, unit: str | None = None, doc: str | None = None
               ) -> metrics_pb2.Metric:
        m = metrics.get(name)
        if m is None:
            kind, default_unit, default_doc = METRICS.get(name, (GAUGE, "", ""))
            m = metrics[name] = metrics_pb2.Metric(
                name=name, unit=unit if unit is not None else default_unit,
                description=doc if doc is not None else default_doc)
            if kind == HIST:
                m.histogram.aggregation_temporality = temporality
            elif kind in (SUM, UPDOWN):
                m.sum.aggregation_temporality = temporality
                m.sum.is_monotonic = kind == SUM
        return m

    for (name, attrs), p in sorted(points.items(), key=order):
        kind = METRICS[name][0]
        m = metric(name)
        start = p.start if cumulative else window_start
        if kind == HIST:
            hp = m.histogram.data_points.add(
                start_time_unix_nano=start, time_unix_nano=now, count=p.count, sum=p.total,
                bucket_counts=p.buckets,
                explicit_bounds=DURATION_BOUNDS if name.endswith("duration") else SIZE_BOUNDS)
            if p.max is not None and p.count:
                hp.max = p.max
            hp.attributes.extend(key_values(attrs))
        else:
            sp = m.sum.data_points.add(start_time_unix_nano=start, time_unix_nano=now,
                                       as_int=int(p.total))
            sp.attributes.extend(key_values(attrs))
    if active is not None:
        m = metric("http.server.active_requests")
        m.sum.data_points.add(start_time_unix_nano=born if cumulative
                              else window_start, time_unix_nano=now, as_int=active)
    for (name, attrs), value in sorted(gauges.items(), key=order):
        column = next(c for c, spec in SYSTEM.items() if spec[0] == name)
        _, unit, _, _, doc = SYSTEM[column]
        gp = metric(name, unit, doc).gauge.data_points.add(time_unix_nano=now,
                                                             as_double=value)
        gp.attributes.extend(key_values(attrs))
    resource_pb = resource_pb2.Resource(attributes=key_values((
        *resource, ("telemetry.sdk.name", "instrument-kit"),
        ("telemetry.sdk.language", "python"))))
    scope = common_pb2.InstrumentationScope(name="instrument", version=version())
    return metrics_service_pb2.ExportMetricsServiceRequest(resource_metrics=[
        metrics_pb2.ResourceMetrics(resource=resource_pb, scope_metrics=[
            metrics_pb2.ScopeMetrics(scope=scope, metrics=list(metrics.values()))])])


def attributes(kind: str, name: Any, method: Any, status: Any) -> Attrs:
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


def key_values(attrs: Iterable[tuple[str, Any]]) -> list[common_pb2.KeyValue]:
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


def order(item: tuple[SeriesKey, Any]) -> tuple[str, str]:
    (name, attrs), _ = item
    return name, repr(attrs)


_VERSION: list[str] = []


def version() -> str:
    if not _VERSION:
        try:
            from importlib.metadata import version

            _VERSION.append(version("instrument-kit"))
        except Exception:
            _VERSION.append("0")
    return _VERSION[0]
