"""Paths the adapters skip entirely (health checks, the kit's own pages)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Excludes"]


class Excludes:
    """Exact paths in a frozenset, prefixes (entries ending in ``*``) in a tuple."""

    __slots__ = ("exact", "prefixes")

    def __init__(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        self.exact = frozenset(p for p in paths if not p.endswith("*"))
        self.prefixes = tuple(p[:-1] for p in paths if p.endswith("*"))

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def __contains__(self, path: str) -> bool:
        return path in self.exact or (bool(self.prefixes) and path.startswith(self.prefixes))
