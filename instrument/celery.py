"""Celery helper: records every task as kind ``task`` and carries request ids into tasks.

Implemented in :mod:`instrument.adapters.celery`; import it from here.
"""

from instrument.adapters.celery import instrument_celery

__all__ = ["instrument_celery"]
