"""Route templates for Starlette and FastAPI, read after the app has routed.

Starlette's router leaves the matched route object in ``scope["route"]`` (and
FastAPI its effective route, prefixes included, under ``scope["fastapi"]``).
We map that object to its template once and cache it, so a request pays one
dict lookup instead of re-running the route match as the Prometheus exporters
do. Mounts add the template of their path prefix, found by matching the
concrete prefix (``root_path``) against the app's Mount regexes, also cached.
"""

from __future__ import annotations

import re
from typing import Any

from instrument.core.batch import UNMATCHED

__all__ = ["RouteResolver"]

_CACHE_LIMIT = 4096


class RouteResolver:
    """Resolves and caches templates for one wrapped ASGI app."""

    __slots__ = ("_app", "_mounts", "_prefix_cache", "_templates")

    def __init__(self, app: Any) -> None:
        self._app = app
        self._templates: dict[int, tuple[Any, str]] = {}
        self._prefix_cache: dict[str, str] = {}
        self._mounts: list[tuple[re.Pattern[str], str]] | None = None

    def __call__(self, scope: Any, root0: str) -> str:
        route = scope.get("route")
        if route is None:
            # A Starlette router saw the request but nothing matched: fold it.
            return UNMATCHED if "router" in scope else scope["path"]
        fastapi = scope.get("fastapi")
        obj = route
        if fastapi:
            ctx = fastapi.get("effective_route_context")
            if ctx is not None:
                obj = ctx
        hit = self._templates.get(id(obj))
        if hit is not None and hit[0] is obj:
            template = hit[1]
        else:
            template = _template_of(obj)
            if len(self._templates) < _CACHE_LIMIT:
                self._templates[id(obj)] = (obj, template)
        root = scope.get("root_path", "")
        if root != root0 and root.startswith(root0):
            prefix = self._mount_prefix(root[len(root0):])
            if template.endswith("/{path}") and obj is route and _is_mount(route):
                # The request stopped at the Mount itself: the mounted router matched
                # nothing (a 404), or the mounted app has no routes (static files).
                return UNMATCHED if route.routes else prefix + "/{path}"
            template = prefix + template
        return template

    def _mount_prefix(self, concrete: str) -> str:
        cached = self._prefix_cache.get(concrete)
        if cached is not None:
            return cached
        if self._mounts is None:
            self._mounts = list(_walk_mounts(self._app))
        found = concrete
        for regex, template in self._mounts:
            if regex.fullmatch(concrete):
                found = template
                break
        if len(self._prefix_cache) < _CACHE_LIMIT:
            self._prefix_cache[concrete] = found
        return found


def _is_mount(route: Any) -> bool:
    path_format = getattr(route, "path_format", None)
    return (isinstance(path_format, str) and path_format.endswith("/{path}")
            and hasattr(route, "routes"))


def _template_of(obj: Any) -> str:
    for attr in ("path_format", "path"):
        value = getattr(obj, attr, None)
        if isinstance(value, str) and value:
            return value
    return UNMATCHED


def _find_routes(app: Any, depth: int = 0) -> list[Any]:
    """Follow .router / .app links down a middleware stack to the first routes list."""
    seen = 0
    node = app
    while node is not None and seen < 32:
        routes = getattr(node, "routes", None)
        if isinstance(routes, list):
            return routes
        router = getattr(node, "router", None)
        if router is not None and isinstance(getattr(router, "routes", None), list):
            return list(router.routes)
        node = getattr(node, "app", None)
        seen += 1
    return []


def _walk_mounts(app: Any, prefix: str = "", depth: int = 0) -> Any:
    """Yield (regex, template) for every chain of Mounts, longest chains first."""
    if depth > 8:
        return
    found: list[tuple[re.Pattern[str], str]] = []
    for route in _find_routes(app):
        path_format = getattr(route, "path_format", None)
        if path_format is None or not hasattr(route, "routes") or not path_format.endswith(
            "/{path}"
        ):
            continue
        template = prefix + path_format[: -len("/{path}")]
        found.extend(_walk_mounts(route.app, template, depth + 1))
        found.append((_compile(template), template))
    yield from found


def _compile(template: str) -> re.Pattern[str]:
    pattern = ""
    pos = 0
    for m in re.finditer(r"{([^}:]+)(?::([^}]+))?}", template):
        pattern += re.escape(template[pos : m.start()])
        pattern += ".*" if m.group(2) == "path" else "[^/]+"
        pos = m.end()
    pattern += re.escape(template[pos:])
    return re.compile(pattern)
