"""The kit's data for other systems to read: the Prometheus exposition.

``prometheus`` (a collector over the store's cumulative totals), ``snapshot``
(reading those totals from SQLite or PostgreSQL) and ``serve`` (answering scrapes in
front of an app, or standalone). Users import :mod:`instrument.prometheus`.
"""
