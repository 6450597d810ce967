"""The kit's settings in a Django project: ``INSTRUMENT_*`` variables plus ``settings.INSTRUMENT``.

``INSTRUMENT = {"flush_interval": 0.5, "INSTRUMENT_DASHBOARD_TOKEN": "..."}`` in
Django's settings takes the :class:`~instrument.config.Settings` field names or
the environment variable names (aliases too, and field names in capitals). Its
values win over the environment, as options given in code do
(``instrument.configure(...)``): read ``os.environ`` in ``settings.py`` for a
value the environment should decide. A key the kit does not know fails the
start-up with :class:`~instrument.config.ConfigError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from instrument.config import VARIABLES, ConfigError, Settings
from instrument.core.runtime import UNSTARTED, runtime

__all__ = ["django_overrides", "django_settings"]

_FIELDS = frozenset(f.name for f in dataclasses.fields(Settings))
_BY_NAME = {name: v.field for v in VARIABLES for name in (v.name, *v.aliases)}
_applied: list[Any] = [None, None]  # the Settings the dict was last applied to, and the dict


def django_overrides() -> dict[str, Any]:
    """``settings.INSTRUMENT`` as Settings field names (empty when it is not set)."""
    from django.conf import settings

    raw = getattr(settings, "INSTRUMENT", None)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"Django setting INSTRUMENT must be a dict, not {type(raw).__name__}.")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key)
        field = name if name in _FIELDS else _BY_NAME.get(name)
        if field is None and name.lower() in _FIELDS:
            field = name.lower()
        if field is None:
            raise ConfigError(f"Django setting INSTRUMENT has unknown key {name!r}; use a"
                              f" Settings field or its variable name: {sorted(_FIELDS)}.")
        out[field] = value
    return out


def django_settings() -> Settings:
    """Start the kit (once per configuration) with the environment and ``settings.INSTRUMENT``.

    Already running with the same values: nothing changes. Running with other values
    (configured in code before): the dict's values replace those, the rest is kept.
    """
    current = runtime.settings
    overrides = django_overrides()  # read each time: a handler is built once, tests override
    if (runtime.state != UNSTARTED and current is not None and _applied[0] is current
            and _applied[1] == overrides):
        return current
    if not overrides:
        settings = runtime.ensure_started()
    elif runtime.state != UNSTARTED and current is not None:
        wanted = Settings.from_env(None, **overrides)  # typed, to compare with what runs
        if all(getattr(current, k) == getattr(wanted, k) for k in overrides):
            settings = current
        else:
            kept = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
            settings = runtime.configure(None, **{**kept, **overrides})
    else:
        settings = runtime.configure(None, **overrides)
    _applied[0], _applied[1] = settings, overrides
    return settings
