"""Readings of the machine and this process, and the application's own metrics.

``reader`` takes one reading from a psutil-like source, each probe allowed to fail
or hang; ``collector`` is the seed's ``MetricsCollector`` (a thread of readings,
application gauges and counters, summaries); ``current`` keeps one per process.
Users import :mod:`instrument.metrics_collector`.
"""
