"""The one exception an optional import raises, with the install hint."""

from __future__ import annotations

__all__ = ["MissingDependency", "missing_extra"]


class MissingDependency(ImportError):
    """An adapter or backend needs a package that is not installed."""


def missing_extra(package: str, extra: str) -> MissingDependency:
    return MissingDependency(
        f"{package!r} is not installed; install it with: pip install \"instrument-kit[{extra}]\""
    )
