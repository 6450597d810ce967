"""One typed reader for every setting, over an injected mapping (default ``os.environ``).

Settings are read when the kit starts (first middleware, ``configure()`` or
``start_monitoring_with_config()``), never at import time. A bad value raises
:class:`ConfigError` naming the variable, the value and what was expected, so a
typo fails the deploy instead of silently turning monitoring off.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["VARIABLES", "ConfigError", "Settings", "Variable", "read_variables"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting has a value the kit cannot use."""


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("Not a valid boolean (use true/false, 1/0, yes/no, on/off).")


#: Longest interval or timeout accepted (about 31 years): threads wait with these, and waits
#: past ``threading.TIMEOUT_MAX`` (about 292 years) raise OverflowError inside the thread.
_MAX_SECONDS = 1e9


def shown(raw: Any) -> str:
    """A value for an error message: its repr, cut short if it is long."""
    text = repr(raw)
    return text if len(text) <= 120 else f"{text[:100]}... ({len(str(raw))} characters)"


def brief(reason: object) -> str:
    """What was wrong, cut short: casts quote the parts of a value they refuse."""
    text = str(reason)
    return text if len(text) <= 300 else text[:280] + "... (cut)"


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("Not a valid number.") from None
    if not 0 < value <= _MAX_SECONDS:  # also refuses nan and inf
        raise ValueError(f"Expected a number greater than 0 and at most {_MAX_SECONDS:.0e}.")
    return value


def _int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def cast(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("Not a valid integer.") from None
        if value < minimum:
            raise ValueError(f"Expected an integer >= {minimum}.")
        if maximum is not None and value > maximum:
            raise ValueError(f"Expected an integer from {minimum} to {maximum}.")
        return value

    return cast


def _path_list(raw: str) -> tuple[str, ...]:
    items = tuple(p.strip() for p in raw.split(",") if p.strip())
    for item in items:
        if not item.startswith("/"):
            raise ValueError(f"Each path must start with '/', got {item!r}.")
    return items


def _storage(raw: str) -> str | None:
    value = raw.strip()
    if value.lower() == "sqlite":
        return None
    if value.startswith(("postgresql://", "postgres://")):
        return value
    raise ValueError("Expected 'sqlite' or a 'postgresql://user:password@host:port/db' URL.")


def _url_path(raw: str) -> str:
    value = raw.strip()
    if not value.startswith("/") or len(value) < 2:
        raise ValueError("Expected a path starting with '/', such as '/metrics'.")
    return value


def _str(raw: str) -> str:
    if not raw.strip():
        raise ValueError("Expected a non-empty value.")
    return raw.strip()


def _label(raw: str) -> str:
    value = _str(raw)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in the environment: could never be stored
        raise ValueError("Expected UTF-8 text (the value holds undecodable bytes).") from None
    return value


def _otlp_endpoint(raw: str) -> str:
    from urllib.parse import urlsplit

    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("Expected an http:// or https:// URL, such as"
                         " 'http://127.0.0.1:4318/v1/metrics'.")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError("The URL's port is not a number from 0 to 65535.") from None
    if parts.path in ("", "/"):  # a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT takes
        value = value.rstrip("/") + "/v1/metrics"
    return value


def _otlp_headers(raw: str) -> tuple[tuple[str, str], ...]:
    """``key=value`` pairs separated by commas, values percent-decoded (as OTEL_*_HEADERS)."""
    from urllib.parse import unquote

    pairs = []
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = unquote(key.strip())
        if not sep or not key or any(c in key for c in " \t\r\n:"):
            raise ValueError("Expected comma-separated key=value pairs, such as"
                             " 'api-key=...,tenant=...'.")
        value = unquote(value.strip())
        if any(c in value for c in "\r\n"):
            raise ValueError("A header value may not hold a line break.")
        pairs.append((key, value))
    return tuple(pairs)


def _temporality(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("cumulative", "delta"):
        raise ValueError("Expected 'cumulative' or 'delta'.")
    return value


@dataclass(frozen=True)
class Variable:
    """One environment variable: its field, names, parser, default and meaning."""

    field: str
    name: str
    cast: Callable[[str], Any]
    default: Any
    doc: str
    aliases: tuple[str, ...] = ()


VARIABLES: tuple[Variable, ...] = (
    Variable("enabled", "INSTRUMENT_ENABLED", _bool, True,
             "Kill switch: `false` turns every adapter into a pass-through that records nothing."),
    Variable("metrics_db", "INSTRUMENT_METRICS_DB", _str, "./instrument-data/metrics.db",
             "SQLite file for requests, rollups and system metrics (directories are created).",
             ("METRICS_DB_PATH",)),
    Variable("flush_interval", "INSTRUMENT_FLUSH_INTERVAL", _positive_float, 1.0,
             "Seconds between flushes of the sample buffer to the backends."),
    Variable("buffer_size", "INSTRUMENT_BUFFER_SIZE", _int_at_least(16), 32768,
             "Requests the ring buffer holds (a log line takes a fraction of one); beyond that "
             "new samples are dropped and counted."),
    Variable("max_routes", "INSTRUMENT_MAX_ROUTES", _int_at_least(1), 1000,
             "Distinct route names kept per kind; the rest fold into `__overflow__`."),
    Variable("exclude_paths", "INSTRUMENT_EXCLUDE_PATHS", _path_list, (),
             "Comma-separated paths not recorded; an entry ending in `*` is a prefix."),
    Variable("retention_days", "INSTRUMENT_RETENTION_DAYS", _int_at_least(1, 3650), 7,
             "Days of raw rows and rollups kept in the store.", ("METRICS_RETENTION_DAYS",)),
    Variable("raw_rows", "INSTRUMENT_RAW_ROWS", _bool, True,
             "Keep one `api_metrics` row per request besides the per-minute rollups."),
    Variable("shutdown_timeout", "INSTRUMENT_SHUTDOWN_TIMEOUT", _positive_float, 5.0,
             "Seconds graceful shutdown may spend flushing what is buffered."),
    Variable("collection_interval", "INSTRUMENT_COLLECTION_INTERVAL", _positive_float, 30.0,
             "Seconds between system metric readings.", ("METRICS_COLLECTION_INTERVAL",)),
    Variable("disk_path", "INSTRUMENT_DISK_PATH", _str, "/",
             "Filesystem whose usage and free space the system metrics report."),
    Variable("request_id", "INSTRUMENT_REQUEST_ID", _bool, True,
             "Accept, create and return `X-Request-ID` and put it on log lines; `false` skips it."),
    Variable("trace_context", "INSTRUMENT_TRACE_CONTEXT", _bool, True,
             "Continue an incoming W3C `traceparent` (or start a trace), return it with this"
             " request's span id, send it on with `requests`, put `trace_id` and `span_id` on"
             " JSON log lines; `false` skips it."),
    Variable("exemplars", "INSTRUMENT_EXEMPLARS", _int_at_least(0, 100), 5,
             "Slowest requests kept per route and minute as exemplars (request id, raw path,"
             " client...) in `request_exemplars`; `0` keeps none, failing ones included."),
    Variable("exemplar_failures", "INSTRUMENT_EXEMPLAR_FAILURES", _int_at_least(0, 1000), 20,
             "Failing requests (5xx or an exception) kept per route and minute as exemplars;"
             " the rest are counted."),
    Variable("profiler", "INSTRUMENT_PROFILER", _bool, False,
             "`true` runs the route-aware sampling profiler: collapsed stacks per route and"
             " minute in `profile_stacks` (`GET /api/v1/monitoring/profile`)."),
    Variable("profiler_hz", "INSTRUMENT_PROFILER_HZ", _int_at_least(1, 1000), 50,
             "Samples a second the profiler takes of every thread's stack."),
    Variable("native", "INSTRUMENT_NATIVE", _bool, True,
             "`false` runs the pure-Python twin of each compiled helper (the ASGI exchange, the"
             " `traceparent` check) even where it was built; without a C compiler at install"
             " the twins run anyway."),
    Variable("dashboard_token", "INSTRUMENT_DASHBOARD_TOKEN", _str, None,
             "Secret that opens `/monitoring` and `/api/v1/monitoring/` (bearer token or the"
             " login form); without it or `INSTRUMENT_DASHBOARD_PUBLIC` they answer 404 (but"
             " for the status-only health check); `instrument dashboard` mints one a run."),
    Variable("dashboard_public", "INSTRUMENT_DASHBOARD_PUBLIC", _bool, False,
             "`true` serves the dashboard to anyone who can reach the app, without a token."),
    Variable("health_public", "INSTRUMENT_HEALTH_PUBLIC", _bool, True,
             "`GET /api/v1/monitoring/health` answers `{\"status\": ...}` (200, or 503 when"
             " failing) to anyone, for load balancers and probes; the reasons need the token."
             " `false` closes it."),
)

VARIABLES += (
    Variable("storage", "INSTRUMENT_STORAGE", _storage, None,
             "Where history goes: `sqlite` (the default: the file INSTRUMENT_METRICS_DB) or a"
             " `postgresql://user:password@host:5432/db` URL shared by a fleet"
             ' (`pip install "instrument-kit[postgres]"`).'),
    Variable("instance", "INSTRUMENT_INSTANCE", _label, None,
             "Host label stored with every row and total (default: the machine's host name)."),
    Variable("prometheus", "INSTRUMENT_PROMETHEUS", _bool, False,
             "`true` makes the adapters answer INSTRUMENT_METRICS_PATH with the Prometheus"
             ' exposition (`pip install "instrument-kit[prometheus]"`).'),
    Variable("metrics_path", "INSTRUMENT_METRICS_PATH", _url_path, "/metrics",
             "Path the adapters serve the Prometheus exposition on (never recorded itself)."),
)

VARIABLES += (
    Variable("otlp_endpoint", "INSTRUMENT_OTLP_ENDPOINT", _otlp_endpoint, None,
             "OTLP/HTTP metrics receiver (a Collector), such as"
             " `http://127.0.0.1:4318/v1/metrics` (a URL without a path gets `/v1/metrics`);"
             " set, it turns on the OTLP exporter beside the store"
             ' (`pip install "instrument-kit[otlp]"`).'),
    Variable("otlp_headers", "INSTRUMENT_OTLP_HEADERS", _otlp_headers, (),
             "Headers sent with each OTLP export, `key=value` pairs separated by commas"
             " (percent-encoded, as OTEL_EXPORTER_OTLP_HEADERS); never logged or shown."),
    Variable("otlp_interval", "INSTRUMENT_OTLP_INTERVAL", _positive_float, 10.0,
             "Seconds between OTLP exports; the batches flushed meanwhile are added up."),
    Variable("otlp_temporality", "INSTRUMENT_OTLP_TEMPORALITY", _temporality, "cumulative",
             "`cumulative` (running totals since each series began) or `delta` (what"
             " changed since the previous export) for OTLP sums and histograms."),
    Variable("service_name", "INSTRUMENT_SERVICE_NAME", _label, None,
             "The `service.name` resource attribute of OTLP exports (default:"
             " `unknown_service:python`, as OpenTelemetry names a service left unnamed)."),
)

_BY_FIELD = {v.field: v for v in VARIABLES}
#: Fields whose values never appear in an error message (a storage URL may hold a password).
_SECRETS = frozenset({"dashboard_token", "storage", "otlp_headers"})


def read_variables(variables: tuple[Variable, ...], environ: Mapping[str, str] | None,
                   secrets: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """Parse every variable that is set, the prefixed name before its aliases.

    A bad value raises ConfigError naming the variable and the value (``(hidden)``
    for the fields in ``secrets``), cut short, with what was expected.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for var in variables:
        for name in (var.name, *var.aliases):
            raw = env.get(name)
            if raw is None:
                continue
            try:
                values[var.field] = var.cast(raw)
            except ValueError as exc:
                value = "(hidden)" if var.field in secrets else shown(raw)
                raise ConfigError(f"Config {name!r} has value {value}. {brief(exc)}") from None
            break
    return values


@dataclass(frozen=True)
class Settings:
    """Everything the kit reads at start-up; build it with :meth:`from_env`."""

    enabled: bool = True
    metrics_db: str = "./instrument-data/metrics.db"
    flush_interval: float = 1.0
    buffer_size: int = 32768
    max_routes: int = 1000
    exclude_paths: tuple[str, ...] = ()
    retention_days: int = 7
    raw_rows: bool = True
    shutdown_timeout: float = 5.0
    collection_interval: float = 30.0
    disk_path: str = "/"
    request_id: bool = True
    trace_context: bool = True
    exemplars: int = 5
    exemplar_failures: int = 20
    profiler: bool = False
    profiler_hz: int = 50
    native: bool = True
    dashboard_token: str | None = field(default=None, repr=False)
    dashboard_public: bool = False
    health_public: bool = True
    storage: str | None = field(default=None, repr=False)  # the URL may hold a password
    instance: str | None = None
    prometheus: bool = False
    metrics_path: str = "/metrics"
    otlp_endpoint: str | None = None
    otlp_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # credentials
    otlp_interval: float = 10.0
    otlp_temporality: str = "cumulative"
    service_name: str | None = None
    backends: tuple[Any, ...] | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every variable from ``environ``; keyword overrides (from code) win.

        The ``INSTRUMENT_*`` name wins over the seed's alias when both are set.
        """
        values = read_variables(VARIABLES, environ, _SECRETS)
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise ConfigError(f"Unknown option {key!r}; known options: {sorted(known)}.")
            option = _BY_FIELD.get(key)
            # Numbers and booleans from code get the same checks as from the environment,
            # so configure(flush_interval=0) fails here instead of spinning the flusher.
            scalar = isinstance(option.default, (int, float)) if option is not None else False
            textual = isinstance(value, str) or scalar
            if option is not None and option.cast is not _str and textual:
                try:
                    value = option.cast(value if isinstance(value, str) else str(value))
                except ValueError as exc:
                    text = "(hidden)" if key in _SECRETS else shown(value)
                    raise ConfigError(
                        f"Option {key!r} has value {text}. {brief(exc)}") from None
            values[key] = value
        if "exclude_paths" in values:
            values["exclude_paths"] = tuple(values["exclude_paths"])
        return cls(**values)
