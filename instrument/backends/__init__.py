"""Where users import backends from: storage and alert channels, under the names they know.

Each module here re-exports one from its room: ``sqlite`` and ``postgresql`` from
:mod:`instrument.storage`, ``email``, ``slack``, ``webhook``, ``pagerduty``,
``alertmanager`` and ``log_channel`` from :mod:`instrument.alerting.channels`.
:class:`Backend` is what the flusher calls (``write(batch)``, ``close()``).
"""

from __future__ import annotations

from instrument.alerting.channels.base import AlertChannel, DeliveryError
from instrument.storage.sqlite import SQLiteBackend
from instrument.types import Backend

__all__ = ["AlertChannel", "Backend", "DeliveryError", "SQLiteBackend"]
