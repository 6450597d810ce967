"""Where the dashboard lives, kept import-free so the middlewares can ask cheaply."""

from __future__ import annotations

__all__ = ["API_PREFIX", "HEALTH", "OFF_MESSAGE", "PAGE", "PATHS", "PREFIXES",
           "is_dashboard_path", "is_health_path"]

PAGE = "/monitoring"
API_PREFIX = "/api/v1/monitoring"
#: The status-only health check, open by default (INSTRUMENT_HEALTH_PUBLIC) even with the rest off.
HEALTH = API_PREFIX + "/health"
#: Paths starting with these may belong to the dashboard.
PREFIXES = (PAGE, API_PREFIX)
#: What the middlewares add to their skipped paths when the dashboard is on (exact + prefix).
PATHS = (PAGE, PAGE + "/*", API_PREFIX, API_PREFIX + "/*")

OFF_MESSAGE = ("instrument: the dashboard at %s is off (404; its status-only health check stays"
               " open unless INSTRUMENT_HEALTH_PUBLIC=false). Set INSTRUMENT_DASHBOARD_TOKEN="
               "<a long random secret> to require a token, or INSTRUMENT_DASHBOARD_PUBLIC=true "
               "to open it to anyone who can reach this server.")


def is_dashboard_path(path: str) -> bool:
    """Whether a request path (relative to the app's mount point) is the dashboard's."""
    return path in PREFIXES or path.startswith(("/monitoring/", "/api/v1/monitoring/"))


def is_health_path(path: str) -> bool:
    """Whether ``path`` is the health check: the one path mounted while the dashboard is off."""
    return path == HEALTH
