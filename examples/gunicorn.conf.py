"""gunicorn settings for several workers: no hooks are needed by the kit.

Each worker records and flushes its own samples into the shared SQLite file (WAL mode),
so ``--preload`` and worker recycling (``max_requests``) are both fine.
Run: ``gunicorn -c examples/gunicorn.conf.py examples.flask_app:app``
"""

bind = "127.0.0.1:8003"
workers = 4
preload_app = True
max_requests = 10_000
max_requests_jitter = 500
graceful_timeout = 10  # the kit flushes within INSTRUMENT_SHUTDOWN_TIMEOUT (5 s) at exit
raw_env = ["INSTRUMENT_METRICS_DB=./instrument-data/metrics.db"]
