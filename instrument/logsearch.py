"""Search the ``logs`` table: full text (SQLite FTS5), level, logger, request id and time range.

Implemented in :mod:`instrument.storage.logsearch`; import it from here.
"""

from instrument.storage.logsearch import LogQueryError, request_logs, search_logs

__all__ = ["LogQueryError", "request_logs", "search_logs"]
