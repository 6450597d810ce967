"""Celery queue lengths as application gauges, read from the broker by the collector.

A backlog is the first sign that workers cannot keep up, and only the broker knows it:
no task signal fires for a message nobody has taken yet. ``watch_queues(app)`` adds one
gauge callback per queue to this process's metrics collector, so every collection cycle
(``INSTRUMENT_COLLECTION_INTERVAL``) stores ``celery_queue_length.<queue>`` in
``app_metrics``, where alert rules and the dashboard read it. The length is kombu's
passive ``queue_declare`` message count: on Redis the sum over the queue's priority
lists, on RabbitMQ the broker's ready messages (unacknowledged ones are not counted).
The read runs on the collector's thread, never on a request or in a task.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from instrument.system.current import get_metrics_collector

__all__ = ["PREFIX", "QueueLength", "watch_queues"]

#: gauge name prefix: the gauge of queue ``q`` is ``PREFIX + q``
PREFIX = "celery_queue_length."


class QueueLength:
    """The number of messages waiting in one queue, over one reused broker connection.

    A failed read drops the connection (the next cycle opens a new one) and raises, so
    the collector logs it once; a queue the broker does not know (no list on Redis, not
    declared yet on RabbitMQ) is empty, and keeps the connection unless the broker closed
    the channel over it (AMQP does; Redis's virtual channel stays open).
    """

    def __init__(self, app: Any, queue: str) -> None:
        self.app = app
        self.queue = queue
        self._conn: Any = None
        self._lock = threading.Lock()  # a manual read and the collector's cycle

    def __call__(self) -> float:
        with self._lock:
            if self._conn is None:
                self._conn = self.app.connection_for_read()
            channel = None
            try:
                channel = self._conn.default_channel  # connects on first use
                ok = channel.queue_declare(queue=self.queue, passive=True)
            except Exception as exc:
                if channel is None or "NOT_FOUND" not in str(exc):  # AMQP's 404, Redis's too
                    self._drop()
                    raise
                if not getattr(channel, "is_open", True):
                    self._drop()
                return 0.0
            return float(ok.message_count)

    def close(self) -> None:
        """Release the broker connection (a new one is opened by the next read)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.release()
            except Exception:  # already broken: nothing left to release
                pass

    def __repr__(self) -> str:  # the broker URL may carry a password: never shown
        return f"QueueLength(queue={self.queue!r})"


def watch_queues(app: Any, queues: Iterable[str] | None = None) -> dict[str, QueueLength]:
    """Store the length of each of ``app``'s queues every collection cycle.

    ``queues`` defaults to the app's default queue and those named in ``task_queues``
    and ``task_routes`` (plain names). Call it in the process that runs the metrics
    collector (a web process or a worker); returns the readers by gauge name.
    """
    names = list(queues) if queues is not None else _queues_of(app)
    collector = get_metrics_collector()
    readers = {}
    for name in dict.fromkeys(names):
        reader = QueueLength(app, name)
        collector.gauge_callback(PREFIX + name, reader)
        readers[PREFIX + name] = reader
    return readers


def _queues_of(app: Any) -> list[str]:
    conf = app.conf
    names = [conf.task_default_queue or "celery"]
    for q in conf.task_queues or ():
        names.append(getattr(q, "name", q))
    routes = conf.task_routes
    if isinstance(routes, dict):
        for route in routes.values():
            queue = route.get("queue") if isinstance(route, dict) else None
            if isinstance(queue, str):
                names.append(queue)
    return [n for n in names if isinstance(n, str) and n]
