"""Prometheus exposition of the kit's cumulative totals, correct across workers and machines.

The numbers come from the store, not from process memory: every worker's
flusher adds its deltas to cumulative totals there (:mod:`instrument.storage.totals`),
so any worker, or ``instrument exporter``, answers a scrape with the totals of
all workers ever started, counters never go backwards when workers are
recycled, and a scrape reads a fixed number of rows. Totals are as fresh as
the flush interval (``INSTRUMENT_FLUSH_INTERVAL``, 1 s by default).

The text is produced by ``prometheus_client``'s own encoders, Prometheus text
format or OpenMetrics by the request's ``Accept`` header, from a Collector
over those totals. Latency histograms are the kit's log-linear buckets (16 per
doubling) summed up to each ``le`` bound: the bounds are powers of two in
milliseconds, which are edges of the fine buckets, so the cumulative counts are
exact (a duration of exactly a bound, a measure-zero event, counts in the next
bucket). Size buckets are powers of two in bytes and exact too.

``instrument_http_requests_in_flight`` is the HTTP requests being served: the
sum over live worker processes of the count each stored at its last flush
(``instrument/core/inflight.py``). Each process writes its count when it changes,
and every few seconds while it is not 0; a count stops being summed when it
was not renewed within three flush intervals (at least 5 s), so a worker that
died (SIGKILL, recycled without a last flush) drops out by itself. It is a
sample, as fresh as the flush interval; average concurrency over a window is
exact from the histogram (Little's law):
``sum(rate(instrument_http_request_duration_seconds_sum[1m]))``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from instrument._errors import missing_extra
from instrument.exporters.snapshot import Snapshot, Source, source_for

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import CollectorRegistry
    from prometheus_client.utils import floatToGoString
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("prometheus_client", "prometheus") from exc

__all__ = ["DURATION_BOUNDS", "SIZE_BOUNDS", "InstrumentCollector", "make_registry", "render"]

#: ``le`` bounds in seconds: 2**k ms for k = -2..14 (0.25 ms to 16.4 s), fine-bucket edges.
DURATION_BOUNDS = tuple(2.0 ** k / 1000.0 for k in range(-2, 15))
_DURATION_LIMITS = tuple(16 * k for k in range(-2, 15))  # fine bucket index < limit
#: ``le`` bounds in bytes: 4**k from 64 B to 64 MiB.
SIZE_BOUNDS = tuple(float(2 ** e) for e in range(6, 27, 2))
_SIZE_LIMITS = tuple(e + 1 for e in range(6, 27, 2))  # size bucket index <= e

# kind -> (metric prefix, count name, name label, labelled by method and status)
_KINDS = {
    "http": ("instrument_http", "requests", "route", True),
    "client": ("instrument_client", "requests", "target", True),
    "call": ("instrument_function", "calls", "function", False),
}
_WHAT = {"http": "HTTP requests served", "client": "outgoing calls",
         "call": "calls of decorated functions"}
_HELP = {"http": "HTTP requests served.", "client": "Outgoing calls.",
         "call": "Calls of decorated functions."}


def _cumulative(buckets: dict[int, int], limits: Iterable[int]) -> list[int]:
    """Counts of the fine buckets below each limit (sparse buckets, one pass)."""
    items = sorted(buckets.items())
    out: list[int] = []
    i, seen = 0, 0
    for limit in limits:
        while i < len(items) and items[i][0] < limit:
            seen += items[i][1]
            i += 1
        out.append(seen)
    return out


def _histogram(name: str, doc: str, labels: list[str], data: dict[tuple[Any, ...], dict[int, int]],
               sums: dict[tuple[Any, ...], float], bounds: tuple[float, ...],
               limits: tuple[int, ...], scale: float) -> HistogramMetricFamily:
    """One histogram family: fine buckets summed up to each bound, ``+Inf`` = count."""
    family = HistogramMetricFamily(name, doc, labels=labels)
    for key in sorted(data):
        counts = data[key]
        total = sum(counts.values())
        cum = _cumulative(counts, limits)
        points = [(floatToGoString(b), float(c)) for b, c in zip(bounds, cum, strict=True)]
        points.append(("+Inf", float(total)))
        family.add_metric(list(key), points, sums.get(key, 0.0) * scale)
    return family


class InstrumentCollector:
    """A prometheus_client Collector over a :class:`Source` of cumulative totals."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration, and no store read then

    def collect(self) -> Iterator[Metric]:
        snap = self.source.read()
        yield from self._requests(snap)
        yield GaugeMetricFamily(
            "instrument_http_requests_in_flight",
            "HTTP requests being served: the sum over live worker processes of each one's"
            " count at its last flush.", value=float(snap.in_flight))
        yield from self._counters(snap)
        yield from _system(snap)

    def _requests(self, snap: Snapshot) -> Iterator[Metric]:
        counts: dict[str, dict[tuple[Any, ...], float]] = {}
        sums: dict[tuple[str, str], dict[tuple[Any, ...], float]] = {}
        for kind, name, method, status, count, _errors, sum_ms, qb, rb in snap.series:
            if kind not in _KINDS:
                continue
            full = _KINDS[kind][3]
            key = (str(method), str(name), str(status)) if full else (str(name),)
            per = counts.setdefault(kind, {})
            per[key] = per.get(key, 0) + count
            hkey = key[:2] if full else key
            for family, value in (("duration", sum_ms), ("request_size", qb),
                                  ("response_size", rb)):
                s = sums.setdefault((kind, family), {})
                s[hkey] = s.get(hkey, 0.0) + float(value)
        hists: dict[tuple[str, str], dict[tuple[Any, ...], dict[int, int]]] = {}
        for family, kind, name, method, bucket, count in snap.buckets:
            if kind not in _KINDS:
                continue
            hkey = (str(method), str(name)) if _KINDS[kind][3] else (str(name),)
            per_b = hists.setdefault((kind, family), {}).setdefault(hkey, {})
            per_b[int(bucket)] = per_b.get(int(bucket), 0) + int(count)
        for kind, (prefix, noun, label, full) in _KINDS.items():
            labels = ["method", label, "status"] if full else [label]
            counter = CounterMetricFamily(f"{prefix}_{noun}", _HELP[kind], labels=labels)
            for key, value in sorted(counts.get(kind, {}).items()):
                counter.add_metric(list(key), value)
            yield counter
            yield _histogram(f"{prefix}_{'request_' if full else ''}duration_seconds",
                             f"Duration of {_WHAT[kind]}.", labels[:-1] if full else labels,
                             hists.get((kind, "duration"), {}), sums.get((kind, "duration"), {}),
                             DURATION_BOUNDS, _DURATION_LIMITS, 0.001)
            if full:
                for family, what in (("request_size", "Request"), ("response_size", "Response")):
                    yield _histogram(f"{prefix}_{family}_bytes",
                                     f"{what} body size of {_WHAT[kind]}.", labels[:-1],
                                     hists.get((kind, family), {}), sums.get((kind, family), {}),
                                     SIZE_BOUNDS, _SIZE_LIMITS, 1.0)

    def _counters(self, snap: Snapshot) -> Iterator[Metric]:
        excs: dict[str, CounterMetricFamily] = {}
        for kind, (prefix, _, label, full) in _KINDS.items():
            labels = ["method", label, "exception"] if full else [label, "exception"]
            excs[kind] = CounterMetricFamily(f"{prefix}_exceptions",
                                             f"Exceptions raised by {_WHAT[kind]}, by type.",
                                             labels=labels)
        kit: dict[str, float] = {}
        for metric, kind, name, method, label, value in snap.counters:
            if metric == "exceptions" and kind in excs:
                values = [str(method), str(name), str(label)] if _KINDS[kind][3] else [
                    str(name), str(label)]
                excs[kind].add_metric(values, value)
            elif metric.startswith("kit_"):
                kit[metric] = kit.get(metric, 0.0) + float(value)
        yield from excs.values()
        for metric, name, doc in (
                ("kit_samples", "instrument_kit_samples",
                 "Samples the kit's processes wrote to the store."),
                ("kit_dropped", "instrument_kit_samples_dropped",
                 "Samples dropped: buffer full, or given up after repeated flush failures."),
                ("kit_flush_errors", "instrument_kit_flush_errors",
                 "Failed writes to a backend (each retried with backoff).")):
            yield CounterMetricFamily(name, doc, value=kit.get(metric, 0.0))
        if "kit_last_flush" in kit:
            yield GaugeMetricFamily("instrument_kit_last_flush_timestamp_seconds",
                                    "When a process last wrote its totals (Unix time).",
                                    value=kit["kit_last_flush"])


_MB = 1024.0 * 1024.0
_MACHINE = (  # column, metric, help, scale, counter
    ("cpu_percent", "instrument_system_cpu_usage_ratio", "Machine CPU use (0-1).", 0.01, False),
    ("memory_percent", "instrument_system_memory_usage_ratio", "Machine memory in use (0-1).",
     0.01, False),
    ("memory_used_mb", "instrument_system_memory_used_bytes", "Machine memory in use.", _MB,
     False),
    ("memory_available_mb", "instrument_system_memory_available_bytes",
     "Machine memory available.", _MB, False),
    ("disk_usage_percent", "instrument_system_disk_usage_ratio",
     "Share of the watched filesystem in use (0-1).", 0.01, False),
    ("disk_free_gb", "instrument_system_disk_free_bytes", "Free space on the watched filesystem.",
     _MB * 1024.0, False),
    ("network_bytes_sent", "instrument_system_network_transmit_bytes",
     "Bytes sent by the machine since boot.", 1.0, True),
    ("network_bytes_recv", "instrument_system_network_receive_bytes",
     "Bytes received by the machine since boot.", 1.0, True),
    ("active_connections", "instrument_system_active_connections",
     "Sockets in use (TIME_WAIT excluded).", 1.0, False),
)
_PROCESS = (
    ("process_rss_mb", "instrument_process_resident_memory_bytes", "Resident memory.", _MB),
    ("process_cpu_percent", "instrument_process_cpu_usage_ratio",
     "CPU use (1 = one core).", 0.01),
    ("process_threads", "instrument_process_threads", "Threads.", 1.0),
    ("process_open_files", "instrument_process_open_fds", "Open files.", 1.0),
)


def _system(snap: Snapshot) -> Iterator[Metric]:
    """Latest machine reading, and each process that reported in the recent window."""
    if snap.system is not None:
        for column, name, doc, scale, counter in _MACHINE:
            value = snap.system.get(column)
            if value is not None:
                cls = CounterMetricFamily if counter else GaugeMetricFamily
                yield cls(name, doc, value=float(value) * scale)
    for column, name, doc, scale in _PROCESS:
        family = GaugeMetricFamily(name, f"{doc} Per process (pid) of the instrumented app.",
                                   labels=["pid"])
        for pid, reading in sorted(snap.processes.items()):
            if reading.get(column) is not None:
                family.add_metric([str(pid)], float(reading[column]) * scale)
        if family.samples:
            yield family


def make_registry(source: Source | None = None, *, all_hosts: bool = False) -> CollectorRegistry:
    """A registry holding only the kit's collector (over the configured store by default)."""
    if source is None:
        from instrument.core.runtime import runtime

        source = source_for(runtime.ensure_started(), all_hosts=all_hosts)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InstrumentCollector(source))
    return registry


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition body and its content type for an ``Accept`` header."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
