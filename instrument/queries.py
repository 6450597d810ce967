"""Read-side SQL over the metrics store: summaries, per-route tables, system and app metrics.

Implemented in :mod:`instrument.storage.queries`; import it from here.
"""

from instrument.storage.queries import (
    Database,
    api_stats,
    app_metric_series,
    app_metrics_latest,
    open_readonly,
    recent_system_metrics,
    summary,
    system_stats,
    timeseries,
)

__all__ = [
    "Database",
    "api_stats",
    "app_metric_series",
    "app_metrics_latest",
    "open_readonly",
    "recent_system_metrics",
    "summary",
    "system_stats",
    "timeseries",
]
