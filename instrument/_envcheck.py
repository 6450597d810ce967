"""Start-up's one warning about ``INSTRUMENT_*`` variables the kit does not know.

A typo such as ``INSTRUMENT_FLUSH_INTERVALL`` would otherwise be ignored in
silence and the default used; the warning names the closest known variable. It
lives among the faces because it reads both tables, the core's and alerting's;
the runtime calls it through its ``on_configure`` hooks, so start-up in any
adapter, in :func:`instrument.configure` or in the CLI warns, once a name a process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

__all__ = ["known_names", "unknown_variables", "warn_unknown"]

log = logging.getLogger("instrument")
PREFIX = "INSTRUMENT_"
_warned: set[str] = set()


def known_names() -> frozenset[str]:
    """Every ``INSTRUMENT_*`` name some part of the kit reads."""
    from instrument.alerting.config import ALERT_VARIABLES
    from instrument.config import VARIABLES

    return frozenset(v.name for v in (*VARIABLES, *ALERT_VARIABLES))


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``(name, closest known name or None)`` for each unknown ``INSTRUMENT_*`` variable set."""
    env = os.environ if environ is None else environ
    known = known_names()
    out = []
    for name in sorted(env):
        if name.startswith(PREFIX) and name not in known:
            import difflib  # here: only a misspelt variable needs it

            close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
            out.append((name, close[0] if close else None))
    return out


def warn_unknown(environ: Mapping[str, str] | None = None) -> list[str]:
    """Log one warning per unknown variable not warned about yet; return those names.

    Values are never shown: a mistyped name may well hold a secret.
    """
    said = []
    for name, close in unknown_variables(environ):
        if name in _warned:
            continue
        _warned.add(name)
        said.append(name)
        hint = f"did you mean {close}?" if close else \
            "`python -m instrument._envdoc env` lists every variable the kit reads."
        log.warning("instrument: ignoring unknown environment variable %s; %s", name, hint)
    return said
