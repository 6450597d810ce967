"""Backends receive aggregated batches from the flusher; one module per backend."""

from __future__ import annotations

from instrument.alerting.channels.base import AlertChannel, DeliveryError
from instrument.storage.sqlite import SQLiteBackend
from instrument.types import Backend

__all__ = ["AlertChannel", "Backend", "DeliveryError", "SQLiteBackend"]
