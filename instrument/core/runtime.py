"""The kit's process-wide state in one object, with configure, flush, shutdown and fork handling.

The Recorder is created once and never replaced, so adapters can hold on to it;
``configure()`` swaps the flusher and backends behind it. After ``os.fork()``
(gunicorn workers) the child forgets the parent's buffered samples and starts
its own flusher; the parent keeps flushing its own.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from instrument.config import Settings
from instrument.core.buffer import Recorder
from instrument.core.context import READERS as REQUEST_READERS
from instrument.core.exemplars import Picker
from instrument.core.flusher import Flusher
from instrument.core.profiler import Profiler

__all__ = ["OFF", "ON", "UNSTARTED", "Runtime", "runtime"]

log = logging.getLogger("instrument")

UNSTARTED, ON, OFF = 0, 1, 2


class Runtime:
    """Settings, the shared Recorder, the Flusher and the backends of this process."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.recorder.enabled = False
        self.state = UNSTARTED
        self.settings: Settings | None = None
        self.flusher: Flusher | None = None
        self.profiler: Profiler | None = None
        self.backends: list[Any] = []
        self._lock = threading.RLock()
        self._hooks_installed = False
        self.pid = os.getpid()
        #: Called with the environment after each configure that read valid settings
        #: (the faces add the unknown-variable warning here: it needs tables above core).
        self.on_configure: list[Callable[[Mapping[str, str] | None], Any]] = []

    # -- start / configure ----------------------------------------------
    def ensure_started(self) -> Settings:
        settings = self.settings
        if settings is None or self.state == UNSTARTED:
            with self._lock:
                if self.settings is None or self.state == UNSTARTED:
                    return self.configure()
                return self.settings
        return settings

    def configure(self, environ: Mapping[str, str] | None = None, **options: Any) -> Settings:
        settings = Settings.from_env(environ, **options)
        for hook in self.on_configure:
            try:
                hook(environ)
            except Exception:  # a warning must never stop start-up
                log.debug("instrument: a configure hook failed", exc_info=True)
        with self._lock:
            self._stop_flusher()
            self.settings = settings
            self.recorder.resize(settings.buffer_size)
            if not settings.enabled:
                self.state = OFF
                self.recorder.enabled = False
                self.backends = []
                return settings
            if settings.backends is not None:
                self.backends = list(settings.backends)
            elif settings.storage is not None:  # a postgresql:// URL (config checked it)
                from instrument.storage.postgresql import PostgreSQLBackend

                self.backends = [PostgreSQLBackend(settings.storage,
                                                   retention_days=settings.retention_days)]
            else:
                from instrument.storage.sqlite import SQLiteBackend

                self.backends = [SQLiteBackend(settings.metrics_db,
                                               retention_days=settings.retention_days)]
            if settings.otlp_endpoint is not None:  # an exporter beside the store
                from instrument.storage.otlp import OTLPBackend

                self.backends.append(OTLPBackend(
                    settings.otlp_endpoint, headers=settings.otlp_headers,
                    interval=settings.otlp_interval, temporality=settings.otlp_temporality,
                    service_name=settings.service_name))
            self._start_flusher()
            self.recorder.enabled = True
            self.state = ON
            self._install_hooks()
        return settings

    def _start_flusher(self) -> None:
        assert self.settings is not None
        self.flusher = Flusher(self.recorder, self.backends,
                               interval=self.settings.flush_interval,
                               max_routes=self.settings.max_routes,
                               raw_rows=self.settings.raw_rows,
                               host=self.settings.instance,
                               picker=Picker(self.settings.exemplars,
                                             self.settings.exemplar_failures))
        self.flusher.start()
        if self.settings.profiler:
            # each request made current (as for log lines): worker threads running a
            # request's code are attributed to it through their copy of its context
            REQUEST_READERS[0] = True
            self.profiler = Profiler(self.recorder.add, self.settings.profiler_hz)
            self.profiler.start()

    def _stop_flusher(self) -> None:
        self._stop_profiler()
        if self.flusher is not None:
            timeout = self.settings.shutdown_timeout if self.settings else 5.0
            self.flusher.shutdown(timeout)
            self.flusher = None

    def _stop_profiler(self) -> None:
        """Stop sampling and hand its counts to the buffer, before the flusher's last flush."""
        profiler, self.profiler = self.profiler, None
        if profiler is not None:
            profiler.stop()

    def _install_hooks(self) -> None:
        if self._hooks_installed:
            return
        self._hooks_installed = True
        ref = weakref.ref(self)

        def at_exit() -> None:
            rt = ref()
            if rt is not None:
                rt.shutdown()

        def after_fork() -> None:
            rt = ref()
            if rt is not None:
                rt._after_fork_in_child()

        atexit.register(at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=after_fork)

    def _after_fork_in_child(self) -> None:
        # Locks held by other threads at fork time stay held in the child forever,
        # so every primitive is rebuilt here rather than reused (as sentry's worker does).
        self._lock = threading.RLock()
        self.pid = os.getpid()
        self.profiler = None  # its thread did not survive the fork; _start_flusher starts one
        self.recorder.reset_after_fork()
        if self.state == ON and self.settings is not None:
            for backend in self.backends:
                reset = getattr(backend, "reset_after_fork", None)
                if reset is not None:
                    reset()
            self._start_flusher()
        else:
            self.flusher = None

    # -- public operations ---------------------------------------------
    def flush(self, timeout: float | None = 5.0) -> bool:
        flusher = self.flusher
        if flusher is None:
            return True
        profiler = self.profiler
        if profiler is not None:  # its counts so far go with this flush
            profiler.hand_over()
        return flusher.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        with self._lock:
            flusher = self.flusher
            if flusher is None:
                if self.state == OFF:  # switched off: the next start reads the settings again
                    self.state = UNSTARTED
                return True
            if timeout is None:
                timeout = self.settings.shutdown_timeout if self.settings else 5.0
            self._stop_profiler()
            ok = flusher.shutdown(timeout)
            self.flusher = None
            self.state = UNSTARTED
            self.recorder.enabled = False
            return ok

    def stats(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "enabled": self.state == ON,
            "pid": self.pid,
            "buffered": self.recorder.buffered,
            "capacity": self.recorder.capacity,
            "dropped": self.recorder.dropped,
        }
        profiler = self.profiler
        if profiler is not None:
            base["profiler"] = profiler.stats()
        elif self.settings is not None:
            base["profiler"] = {"on": False, "hz": self.settings.profiler_hz}
        if self.flusher is not None:
            base.update(self.flusher.stats())
        else:
            base.update({"alive": False, "backends": []})
        return base


runtime = Runtime()
