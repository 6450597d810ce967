"""The pipeline: what happens to a sample between the request and the backends.

``buffer`` (the bounded, lock-free ring the request path appends to), ``context``
(the current request and its id), ``flusher`` (the one thread that drains, aggregates
and calls backends, with ``pending`` keeping each backend's queue and failures),
``aggregate`` (samples into a :class:`~instrument.core.batch.Batch`: raw rows and
rollups), ``histogram`` (the latency buckets), ``inflight`` (the in-flight gauge),
``forkguard`` (no fork while a kit thread is inside SQLite), ``suppress`` (the kit's
own I/O is never recorded), ``redact`` (secrets out of text and fields) and ``runtime``
(settings in, flusher and default storage out; the one module here that knows storage).
Internal: users import from :mod:`instrument`.
"""
