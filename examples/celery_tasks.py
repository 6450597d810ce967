"""A small Celery app with the kit: every task is recorded, and carries the enqueuer's id.

Needs a Redis server; ``CELERY_BROKER_URL`` defaults to ``redis://127.0.0.1:6379/0``.

Run the worker (its log lines are JSON, with the request id of whoever enqueued)::

    cd examples && celery -A celery_tasks worker --pool=solo

then enqueue a batch and wait for it (from another shell)::

    python examples/celery_tasks.py

The tasks land in ``call_metrics`` of the worker's store as kind ``task`` (one row
per run, its outcome in ``method``) and ``task_wait`` (publish to start).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from celery import Celery, signals

import instrument
from instrument.celery import instrument_celery
from instrument.logs import request_context, setup_logging

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("celery_tasks", broker=BROKER, backend=BROKER)
app.conf.update(broker_connection_retry_on_startup=True, result_expires=3600)
instrument_celery(app)
log = logging.getLogger("celery_tasks")


@signals.setup_logging.connect
def json_logs(**_: Any) -> None:
    """The worker logs JSON lines with request_id and trace_id (Celery then leaves logging be)."""
    setup_logging("INFO", store=False)


@app.task(name="images.resize")
def resize(size: int) -> int:
    if size % 7 == 0:
        raise ValueError(f"cannot resize {size}")
    log.info("resized", extra={"size": size})
    return size // 2


@app.task(name="mail.send", bind=True, max_retries=3)
def send_mail(self: Any, to: str) -> str:
    if self.request.retries < 1:  # the first attempt always finds the server busy
        raise self.retry(exc=ConnectionError("mail server busy"), countdown=0)
    log.info("sent", extra={"to": to})
    return to


def run(jobs: int = 10, timeout: float = 30.0) -> dict[str, Any]:
    """Enqueue ``jobs`` resizes and one mail as one request would, and wait for them."""
    with request_context(route="/batch", method="POST") as rid:
        results = [resize.delay(size) for size in range(1, jobs + 1)]
        mail = send_mail.delay("ops@example.com")
    done = failed = 0
    for result in results:
        result.get(timeout=timeout, propagate=False)
        if result.successful():
            done += 1
        else:
            failed += 1
    mail.get(timeout=timeout)
    instrument.flush()
    return {"request_id": rid, "done": done, "failed": failed, "mailed": 1}


if __name__ == "__main__":
    print(json.dumps(run()))
