"""Celery helper: records every task as kind ``task`` and carries request ids into tasks.

Implemented in :mod:`instrument.adapters.celery`; import it from here.
"""

from instrument.adapters.celery import instrument_celery
from instrument.adapters.celery_queues import watch_queues

__all__ = ["instrument_celery", "watch_queues"]
