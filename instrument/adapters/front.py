"""Paths the adapters skip entirely (health checks, the kit's own pages)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["Excludes", "front"]


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


def front(app: Any, settings: Any, exclude_paths: Iterable[str] | None, *,
          asgi: bool) -> tuple[Any, Excludes | frozenset[str] | None]:
    """What answers the skipped paths, and the skip list (None when empty).

    Skipped paths are never recorded: the user's excluded paths go straight to
    ``app``; the kit's own ``/metrics`` and dashboard paths are answered in front of it.
    None instead of an empty list spares the middlewares a ``__bool__`` call per request,
    and a plain frozenset when there are no prefixes spares them a ``__contains__`` call.
    """
    paths = list(settings.exclude_paths if exclude_paths is None else exclude_paths)
    bypass = app
    if settings.prometheus:
        from instrument.exporters.serve import MetricsASGI, MetricsWSGI

        bypass = (MetricsASGI if asgi else MetricsWSGI)(app, settings.metrics_path)
        paths.append(settings.metrics_path)
    from instrument.dashboard import mounted, mounted_paths

    dashboard = mounted(settings, bypass, asgi=asgi)  # health only until a token or public
    if dashboard is not None:
        bypass = dashboard
        paths.extend(mounted_paths(settings))
    excludes = Excludes(paths)
    if not excludes:
        return bypass, None
    return bypass, (excludes if excludes.prefixes else excludes.exact)
