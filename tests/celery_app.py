"""The Celery app tests/test_celery.py runs in a real worker: one task per outcome.

The worker is ``celery -A tests.celery_app worker``; the broker (and result backend) is
``KIT_CELERY_BROKER``, and ``KIT_CELERY_LOG`` names the file the worker's JSON log
lines go to (the kit's formatter, installed on Celery's ``setup_logging`` signal so
Celery leaves logging alone). The test process imports the same module to publish.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Celery, signals

from instrument.celery import instrument_celery
from instrument.logs import get_request_id, setup_logging

BROKER = os.environ.get("KIT_CELERY_BROKER", "redis://127.0.0.1:6379/0")

app = Celery("kit_tests", broker=BROKER, backend=BROKER)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_default_queue="kit_tests",
    worker_prefetch_multiplier=1,
    result_expires=600,
)
instrument_celery(app)
log = logging.getLogger("kit_tests.tasks")


@signals.setup_logging.connect
def _json_logs(**_: Any) -> None:
    path = os.environ.get("KIT_CELERY_LOG")
    if path:
        setup_logging("INFO", stream=open(path, "a", buffering=1), store=False)  # noqa: SIM115


@app.task(name="kit.ok")
def ok(x: int) -> int:
    return x * 2


@app.task(name="kit.boom")
def boom() -> None:
    raise ValueError("boom")


@app.task(name="kit.flaky", bind=True, max_retries=3)
def flaky(self: Any, succeed_after: int) -> int:
    """Retries ``succeed_after`` times, then succeeds."""
    if self.request.retries < succeed_after:
        raise self.retry(exc=ConnectionError("not yet"), countdown=0)
    return int(self.request.retries)


@app.task(name="kit.doomed", bind=True, max_retries=1)
def doomed(self: Any) -> None:
    """Retries until ``max_retries``; then Celery raises the reason: a failure."""
    raise self.retry(exc=ConnectionError("never"), countdown=0)


@app.task(name="kit.stuck", time_limit=1)
def stuck() -> None:
    """Outlives its hard time limit: the worker kills the child running it."""
    time.sleep(30)


@app.task(name="kit.sleepy")
def sleepy() -> None:
    log.info("sleeping")
    time.sleep(30)


@app.task(name="kit.logged")
def logged(tag: str) -> str | None:
    log.info("task ran", extra={"tag": tag})
    return get_request_id()
