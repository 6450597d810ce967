"""Backends receive aggregated batches from the flusher; one module per backend."""

from __future__ import annotations

from ..types import Backend
from ._channel import AlertChannel, DeliveryError
from .sqlite import SQLiteBackend

__all__ = ["AlertChannel", "Backend", "DeliveryError", "SQLiteBackend"]
