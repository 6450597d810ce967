"""Where the data rests: SQLite (the embedded default) and PostgreSQL, written and read.

Writers (backends the flusher calls): ``sqlite`` with ``sqlite_schema``,
``sqlite_metrics``, ``sqlite_totals``, ``sqlite_logs``; ``postgresql`` with
``pg_schema`` and ``pg_write``. What both write alike: ``rows`` (a batch as table
rows), ``histblob`` (histograms packed in a BLOB), ``totals`` (the cumulative
series the Prometheus exposition reads), ``inflight`` (the per-process gauge rows).
Readers: ``queries`` and ``tiers`` (summaries from the rollups), ``logsearch`` with
``logquery`` and ``pg_logsearch``, ``pg_read`` (the readers' SQL on PostgreSQL).
A backend sees batches, never requests, and never imports the runtime.
Users import ``instrument.backends.sqlite``, ``instrument.queries`` and so on.
"""
