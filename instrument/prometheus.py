"""Prometheus exposition of the kit's cumulative totals, correct across workers and machines.

Implemented in :mod:`instrument.exporters.prometheus` (the collector) and
:mod:`instrument.exporters.serve` (answering scrapes); import it from here.
"""

from instrument.exporters.prometheus import (
    DURATION_BOUNDS,
    SIZE_BOUNDS,
    InstrumentCollector,
    make_registry,
    render,
)
from instrument.exporters.serve import MetricsASGI, MetricsWSGI, run_exporter, serve

__all__ = [
    "DURATION_BOUNDS",
    "SIZE_BOUNDS",
    "InstrumentCollector",
    "MetricsASGI",
    "MetricsWSGI",
    "make_registry",
    "render",
    "run_exporter",
    "serve",
]
