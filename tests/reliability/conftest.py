"""Fixtures of the reliability suite; the harness itself lives in :mod:`tests.reliability.harness`.

(Test modules import the harness by its full name; importing this conftest would
load a second copy of it under pytest's own module name.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.reliability.harness import FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.write_sep("-", "reliability figures")
        for key in sorted(FIGURES):
            terminalreporter.write_line(f"{key}: {FIGURES[key]}")


@pytest.fixture
def thread_errors() -> Iterator[list[str]]:
    """Every exception that ends any thread during the test (none may)."""
    errors: list[str] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        errors.append(f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}:"
                      f" {args.exc_value}")
        previous(args)

    threading.excepthook = hook
    try:
        yield errors
    finally:
        threading.excepthook = previous
