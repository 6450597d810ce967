"""PostgreSQL storage for a fleet: SQLite's schema, rollups, tiers, totals and retention.

Implemented in :mod:`instrument.storage.postgresql`; import it from here.
"""

from instrument.storage.postgresql import PostgreSQLBackend, connect

__all__ = ["PostgreSQLBackend", "connect"]
