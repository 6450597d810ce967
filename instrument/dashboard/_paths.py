"""Where the dashboard lives, kept import-free so the middlewares can ask cheaply."""

from __future__ import annotations

__all__ = ["API_PREFIX", "OFF_MESSAGE", "PAGE", "PATHS", "PREFIXES", "is_dashboard_path"]

PAGE = "/monitoring"
API_PREFIX = "/api/v1/monitoring"
#: Paths starting with these may belong to the dashboard.
PREFIXES = (PAGE, API_PREFIX)
#: What the middlewares add to their skipped paths when the dashboard is on (exact + prefix).
PATHS = (PAGE, PAGE + "/*", API_PREFIX, API_PREFIX + "/*")

OFF_MESSAGE = ("instrument: the dashboard at %s is off (404). Set INSTRUMENT_DASHBOARD_TOKEN="
               "<a long random secret> to require a token, or INSTRUMENT_DASHBOARD_PUBLIC=true "
               "to open it to anyone who can reach this server.")


def is_dashboard_path(path: str) -> bool:
    """Whether a request path (relative to the app's mount point) is the dashboard's."""
    return path in PREFIXES or path.startswith(("/monitoring/", "/api/v1/monitoring/"))
