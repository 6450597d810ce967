"""Every environment variable, given hostile values: the promised ConfigError or a working kit.

A value is either refused at start-up with :class:`instrument.ConfigError`
(naming the variable, raised from nothing deep inside) or accepted, and then
the kit really starts with it: the flusher, the alert thread and the collector
stay alive, and a request recorded under those settings reaches the store.
Values are what a shell, a YAML file or a typo can put into ``os.environ``:
any text without NUL, undecodable bytes (lone surrogates), numbers at and past
the edges, JSON of every shape for the rules variable.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import instrument
from instrument.alerting import AlertManager
from instrument.alerting.config import (
    ALERT_VARIABLES,
    AlertSettings,
    build_channels,
    configured_rules,
)
from instrument.config import VARIABLES, ConfigError, Settings
from instrument.core.runtime import runtime
from tests.reliability.harness import FIGURES, QUIET

NAMES = sorted({n for v in (*VARIABLES, *ALERT_VARIABLES) for n in (v.name, *v.aliases)})
# Variables whose value is a file or directory: fuzzed for their parsing only, never opened
# (a random absolute path would write anywhere on this machine).
PATHS = {"INSTRUMENT_METRICS_DB", "METRICS_DB_PATH", "INSTRUMENT_ALERTS_DB", "ALERTS_DB_PATH",
         "INSTRUMENT_SMTP_CA_FILE", "INSTRUMENT_DISK_PATH"}
EDGES = ["", " ", "0", "-0", "-1", "1", "00", "+1", "1_000", "0x10", "1e3", "1.5", ".5", "-.5",
         "nan", "NaN", "inf", "-inf", "1e308", "1e309", "9" * 400, "1e-320", "5e-324", "65535",
         "65536", "99999999999", "10" * 30, "true", "TRUE", "yes", "on", "off", "no", "maybe",
         "all", "none", "http://", "https://x", "ftp://x", "postgresql://", "sqlite",
         "postgresql://u:p@127.0.0.1:1/db", "/", "//", "/metrics", "a,b", "a@b,c", ",,,",
         "[]", "{}", "null", "[" * 5000 + "]" * 5000, "\udcff", "caf\udce9", "\ud800",
         "x" * 100_000, "\t1\n", "\uff11\uff12", "٣"]  # non-ASCII digits parse as int
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "metric", "op", "value", "severity", "for", "description",
                         "cooldown_period", "no_data", "flap_window", "labels", "x"]) |
        st.text(max_size=5), inner, max_size=6),
    max_leaves=12)
values = (st.sampled_from(EDGES) | st.text(st.characters(blacklist_characters="\x00"),
                                           max_size=40)
          | json_values.map(json.dumps))
environments = st.dictionaries(st.sampled_from(NAMES), values, min_size=1, max_size=4)
# Values at the far edge of what is accepted, for the start-up test: most random text is
# refused, and the point there is what the kit does with the strange values it takes.
ACCEPTED_EDGES = ["1e9", "0.01", "16", "1", "3650", "10" * 12, "65535", " 3 ", "1_0", "١٢",
                  "true", "0", "off", "none", "all", "/x,/y*", "\udcff", "caf\udce9", "\ud800",
                  "<script>", "http://127.0.0.1:1/x", "a@b", "[]", "/metrics\udcff"]
def _alone_accepted(name: str) -> list[str]:
    out = []
    for value in (*EDGES, *ACCEPTED_EDGES):
        try:
            Settings.from_env({name: value})
            configured_rules(AlertSettings.from_env({name: value}))
        except ConfigError:
            continue
        out.append(value)
    return out


ACCEPTED = {name: values for name in NAMES if (values := _alone_accepted(name))}
plausible = st.lists(st.sampled_from(sorted(ACCEPTED)), min_size=1, max_size=6,
                     unique=True).flatmap(lambda names: st.fixed_dictionaries(
                         {n: st.sampled_from(ACCEPTED[n]) for n in names}))


def check_error(exc: ConfigError) -> None:
    """The promised error: names a variable, says what is wrong, carries no inner traceback."""
    text = str(exc)
    assert any(name in text for name in NAMES), text
    assert exc.__cause__ is None and (exc.__suppress_context__ or exc.__context__ is None)
    assert len(text) < 2000, text[:300]


def parse(env: dict[str, str]) -> tuple[Settings, AlertSettings] | None:
    try:
        core = Settings.from_env(env)
        alerts = AlertSettings.from_env(env)
        configured_rules(alerts)
        for channel in build_channels(alerts):
            http = getattr(channel, "http", None)
            if http is not None:
                http.close()
    except ConfigError as exc:
        check_error(exc)
        FIGURES["bad inputs tried: environment refused with ConfigError"] += 1
        return None
    return core, alerts


@settings(QUIET, max_examples=600)
@given(environments)
def test_every_variable_parses_or_raises_config_error(env: dict[str, str]) -> None:
    """Any values of any variables: Settings and AlertSettings build, or ConfigError says why."""
    parse(env)
    FIGURES["bad inputs tried: environment values"] += len(env)


def test_each_variable_alone_with_every_edge_value() -> None:
    """Every variable with every edge value, one at a time (the cases random draws may miss)."""
    for name in NAMES:
        for value in EDGES:
            parse({name: value})
            FIGURES["bad inputs tried: environment values"] += 1


def start_with(env: dict[str, str], tmp: Path) -> None:
    """Start the kit and an alert manager with ``env``; both work, a request is stored."""
    # A generated OTLP endpoint names no receiver: its export at shutdown fails and says so
    # in a warning, by design (tests/test_otlp.py checks that path against real receivers).
    env = {k: v for k, v in env.items()
           if k not in PATHS and k not in ("INSTRUMENT_STORAGE", "INSTRUMENT_OTLP_ENDPOINT")}
    if parse(env) is None:
        return
    FIGURES["environments started"] += 1
    try:
        instrument.configure(environ=env, metrics_db=str(tmp / "m.db"), enabled=True)
    except ConfigError as exc:  # accepted alone, refused in combination with our overrides
        check_error(exc)
        return
    manager = None
    warnings = Capture()
    logging.getLogger("instrument").addHandler(warnings)
    try:
        manager = AlertManager(environ=env, db_path=str(tmp / "a.db"),
                               metrics_provider=lambda: {})
        manager.start_monitoring()
        with instrument.timer("env.probe"):
            pass
        assert instrument.flush(10.0), instrument.stats()
        assert instrument.stats()["alive"] and instrument.stats()["cycle_errors"] == 0
        assert manager.running
        alive = {t.name for t in threading.enumerate()}
        assert {"instrument-flusher", "instrument-alerts"} <= alive
    finally:
        if manager is not None:
            manager.close()
        runtime.shutdown(5.0)
        logging.getLogger("instrument").removeHandler(warnings)
    assert not warnings.records, [r.getMessage() for r in warnings.records]


class Capture(logging.Handler):
    """Keeps the kit's warnings: a start-up with accepted values should log none."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@settings(QUIET, max_examples=80)
@given(plausible)
def test_accepted_values_run(tmp_path_factory: Any, env: dict[str, str]) -> None:
    """Values the parser accepts, several at once, start a working kit."""
    start_with(env, tmp_path_factory.mktemp("env"))


def test_each_strange_accepted_value_runs(tmp_path: Path) -> None:
    """Each variable alone at each accepted extreme (undecodable bytes, 1e9, ...) still works."""
    strange = {"1e9", "10" * 12, "3650", "\udcff", chr(0xD800), "/metrics\udcff", "١٢"}
    for i, (name, values) in enumerate(sorted(ACCEPTED.items())):
        for j, value in enumerate(v for v in values if v in strange):
            start_with({name: value}, tmp_path / f"{i}-{j}")
