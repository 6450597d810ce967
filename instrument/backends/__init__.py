"""Backends receive aggregated batches from the flusher; one module per backend."""

from __future__ import annotations

from ..types import Backend
from .sqlite import SQLiteBackend

__all__ = ["Backend", "SQLiteBackend"]
