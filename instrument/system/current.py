"""This process's collector: made on first use, and made again in a forked child.

After a fork the child gets a fresh one, running if the parent's was, because the
parent's thread does not exist in the child.
"""

from __future__ import annotations

import os
import threading

from instrument.system.collector import MetricsCollector

__all__ = ["get_metrics_collector", "reset_metrics_collector"]

_collector: MetricsCollector | None = None
_collector_pid = 0
_collector_lock = threading.Lock()
# The parent's collector, kept alive in a forked child: collecting it would close the
# parent's SQLite connection from the child, which SQLite forbids.
_inherited: list[MetricsCollector] = []


def get_metrics_collector() -> MetricsCollector:
    """This process's collector, created on first use."""
    global _collector, _collector_pid
    collector = _collector
    if collector is not None and _collector_pid == os.getpid():
        return collector
    with _collector_lock:
        if _collector is None or _collector_pid != os.getpid():
            _collector = MetricsCollector()
            _collector_pid = os.getpid()
        return _collector


def reset_metrics_collector() -> None:
    """Stop and forget this process's collector (tests, reconfiguration)."""
    global _collector
    with _collector_lock:
        collector, _collector = _collector, None
    if collector is not None:
        collector.close()


def _after_fork_in_child() -> None:
    global _collector, _collector_lock, _collector_pid
    _collector_lock = threading.Lock()
    parent = _collector
    if parent is None:
        return
    _inherited.append(parent)
    child = MetricsCollector(**parent._options)
    _collector, _collector_pid = child, os.getpid()
    if parent._thread is not None and not parent._stop.is_set():
        # The first reading waits a moment: the kit's own after-fork handler may still
        # have to restart the flusher and clear the parent's buffer.
        child.start_collection(_delay=min(1.0, child.interval))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
