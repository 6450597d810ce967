"""The seed's ``MetricsCollector``: system, process, kit and application metrics over time.

Implemented in :mod:`instrument.system.collector`; import it from here.
"""

from instrument.system.collector import ApplicationMetrics, MetricsCollector, SystemMetrics
from instrument.system.current import get_metrics_collector, reset_metrics_collector

__all__ = [
    "ApplicationMetrics",
    "MetricsCollector",
    "SystemMetrics",
    "get_metrics_collector",
    "reset_metrics_collector",
]
