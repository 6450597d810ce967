"""Shared fixtures: every test gets a fresh kit writing into its own temporary files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import instrument
from instrument.core.runtime import runtime
from instrument.testing import MemoryBackend


@pytest.fixture(autouse=True)
def _isolated_kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the default store at a temporary file and stop the kit after each test."""
    for name in list(os.environ):
        if name.startswith("INSTRUMENT_") or name in ("METRICS_DB_PATH", "ALERTS_DB_PATH"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("INSTRUMENT_METRICS_DB", str(tmp_path / "metrics.db"))
    yield
    # Stop the kit's other threads too: a later test that forks must not inherit a thread
    # that was inside SQLite at the moment of the fork (its locks stay held in the child).
    from instrument.alerting import reset_alert_manager
    from instrument.metrics_collector import reset_metrics_collector

    reset_alert_manager()
    reset_metrics_collector()
    runtime.shutdown(5.0)


@pytest.fixture(params=[True, False], ids=["compiled", "python"])
def both_exchanges(request: pytest.FixtureRequest, _isolated_kit: None,
                   monkeypatch: pytest.MonkeyPatch) -> bool:
    """A module that asks for it (``pytestmark``) runs each test with the middlewares'
    compiled exchanges and with their pure-Python twins (INSTRUMENT_NATIVE)."""
    monkeypatch.setenv("INSTRUMENT_NATIVE", "true" if request.param else "false")
    return bool(request.param)


@pytest.fixture
def memory() -> MemoryBackend:
    """The kit configured with an in-memory backend and a short flush interval."""
    backend = MemoryBackend()
    instrument.configure(backends=[backend], flush_interval=0.05)
    return backend


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "metrics.db"
