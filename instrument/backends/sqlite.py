"""SQLite storage, the embedded default: one transaction per batch, WAL, safe across processes.

Implemented in :mod:`instrument.storage.sqlite`; import it from here.
"""

from instrument.storage.rows import scrub
from instrument.storage.sqlite import SQLiteBackend, connect, file_id

__all__ = ["SQLiteBackend", "connect", "file_id", "scrub"]
