"""The dashboard and REST API: ``/monitoring`` and ``/api/v1/monitoring/...``.

Three ways to serve it, all over the same SQLite files, or over the fleet's
PostgreSQL database when ``INSTRUMENT_STORAGE`` names one:

- inside an instrumented app: the WSGI and ASGI middlewares answer the
  dashboard's paths themselves (:func:`mounted`), without recording them;
- standalone: ``instrument dashboard --db PATH`` (:mod:`.server`);
- mounted by hand: :func:`wsgi_app` or :func:`asgi_app` give an application to
  put anywhere a WSGI or ASGI app goes.

It is off until ``INSTRUMENT_DASHBOARD_TOKEN`` or
``INSTRUMENT_DASHBOARD_PUBLIC=true`` is set. Importing this package is cheap
(the middlewares import it at start-up); the dashboard itself loads on first use.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from instrument.config import ConfigError, Settings
from instrument.dashboard._paths import (
    API_PREFIX,
    HEALTH,
    OFF_MESSAGE,
    PAGE,
    PATHS,
    PREFIXES,
    is_dashboard_path,
    is_health_path,
)

if TYPE_CHECKING:
    from instrument.dashboard._app import Dashboard
    from instrument.dashboard._glue import ASGIDashboard, WSGIDashboard

__all__ = [
    "API_PREFIX",
    "HEALTH",
    "PAGE",
    "PATHS",
    "PREFIXES",
    "ASGIDashboard",
    "Dashboard",
    "WSGIDashboard",
    "alerts_db_path",
    "asgi_app",
    "for_settings",
    "is_dashboard_path",
    "mounted",
    "mounted_paths",
    "wsgi_app",
]

_shared: dict[tuple[Any, ...], Dashboard] = {}
_shared_lock = threading.Lock()
_said_off: set[int] = set()  # pids that already logged how to turn the dashboard on


def __getattr__(name: str) -> Any:
    if name == "Dashboard":
        from instrument.dashboard._app import Dashboard

        return Dashboard
    if name in ("ASGIDashboard", "WSGIDashboard"):
        from instrument.dashboard import _glue

        return getattr(_glue, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def alerts_db_path(environ: Mapping[str, str] | None = None) -> str:
    """The alert manager's file: ``INSTRUMENT_ALERTS_DB`` (alias ``ALERTS_DB_PATH``)."""
    env = os.environ if environ is None else environ
    try:
        from instrument.alerting.config import AlertSettings

        return str(AlertSettings.from_env(env).alerts_db)
    except (ImportError, ConfigError):  # a bad unrelated alert setting must not hide alerts
        return env.get("INSTRUMENT_ALERTS_DB") or env.get("ALERTS_DB_PATH") or \
            "./instrument-data/alerts.db"


def for_settings(settings: Settings, *, environ: Mapping[str, str] | None = None,
                 in_process: bool = True, announce: bool = True) -> Dashboard:
    """The process's dashboard for these settings, built once and shared by every adapter."""
    from instrument.dashboard._app import Dashboard

    alerts_db = alerts_db_path(environ)
    store = settings.storage or settings.metrics_db
    key = (store, alerts_db, settings.dashboard_token, settings.dashboard_public,
           settings.health_public, in_process, os.getpid())
    with _shared_lock:
        dashboard = _shared.get(key)
        if dashboard is None:
            dashboard = _shared[key] = Dashboard(
                store, alerts_db=alerts_db, token=settings.dashboard_token,
                public=settings.dashboard_public, in_process=in_process,
                collection_interval=settings.collection_interval,
                health_public=settings.health_public)
            if announce:
                dashboard.log_status()
        return dashboard


def mounted(settings: Settings, app: Any, *, asgi: bool = False) -> Any:
    """``app`` fronted by the dashboard (its paths answered, the rest passed on), or None.

    The middlewares send :func:`mounted_paths` to the result instead of recording
    them, through the same skip-list as ``INSTRUMENT_EXCLUDE_PATHS``, so other
    requests pay nothing extra. Until a token or public access is configured only
    the status-only health check is mounted (unless ``INSTRUMENT_HEALTH_PUBLIC=false``,
    then nothing): the app answers the other paths itself (normally a 404), so an app
    with its own ``/monitoring`` keeps it, and the log says how to enable the rest.
    """
    paths = mounted_paths(settings)
    if not paths:
        if os.getpid() not in _said_off:
            _said_off.add(os.getpid())
            logging.getLogger("instrument").info(OFF_MESSAGE, PAGE)
        return None
    from instrument.dashboard._glue import ASGIDashboard, WSGIDashboard

    glue = ASGIDashboard if asgi else WSGIDashboard
    if paths == PATHS:
        return glue(for_settings(settings), app, claims=is_dashboard_path)
    # Health only: said now how to turn the rest on; built when a health check first comes.
    if os.getpid() not in _said_off:
        _said_off.add(os.getpid())
        logging.getLogger("instrument").info(OFF_MESSAGE, PAGE)
    return glue(lambda: for_settings(settings, announce=False), app, claims=is_health_path)


def mounted_paths(settings: Settings) -> tuple[str, ...]:
    """The paths :func:`mounted` answers for these settings (exact, or prefixes ending ``*``)."""
    if settings.dashboard_token or settings.dashboard_public:
        return PATHS
    return (HEALTH,) if settings.health_public else ()


def _build(dashboard: Dashboard | None, options: dict[str, Any]) -> Dashboard:
    from instrument.dashboard._app import Dashboard

    if dashboard is not None:
        return dashboard
    if options:
        settings = Settings.from_env()
        options.setdefault("metrics_db", settings.storage or settings.metrics_db)
        options.setdefault("token", settings.dashboard_token)
        options.setdefault("public", settings.dashboard_public)
        options.setdefault("health_public", settings.health_public)
        options.setdefault("alerts_db", alerts_db_path())
        return Dashboard(options.pop("metrics_db"), **options)
    return for_settings(Settings.from_env(), in_process=False)


def wsgi_app(dashboard: Dashboard | None = None, **options: Any) -> WSGIDashboard:
    """A WSGI app serving the dashboard; ``options``: :class:`Dashboard`'s plus ``metrics_db``."""
    from instrument.dashboard._glue import WSGIDashboard

    return WSGIDashboard(_build(dashboard, options))


def asgi_app(dashboard: Dashboard | None = None, **options: Any) -> ASGIDashboard:
    """An ASGI app serving the dashboard; ``options`` as for :func:`wsgi_app`."""
    from instrument.dashboard._glue import ASGIDashboard

    return ASGIDashboard(_build(dashboard, options))
