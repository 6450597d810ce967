"""Settings: one reader over an injected mapping, precise errors, aliases, code overrides."""

from __future__ import annotations

import dataclasses

import pytest

import instrument
from instrument.config import VARIABLES, ConfigError, Settings, Variable
from instrument.testing import MemoryBackend

#: A value each known variable must refuse; variables added later are probed generically.
BAD_VALUES = {
    "enabled": "maybe",
    "metrics_db": "   ",
    "flush_interval": "0",
    "buffer_size": "8",
    "max_routes": "0",
    "exclude_paths": "health,/metrics",
    "retention_days": "0",
    "raw_rows": "sometimes",
    "shutdown_timeout": "-1",
    "collection_interval": "abc",
}
_GENERIC_BAD = ("not-a-value", "   ", "-1", "0", "nan", "relative/path", "")


def _bad_value(var: Variable) -> str:
    if var.field in BAD_VALUES:
        return BAD_VALUES[var.field]
    for candidate in _GENERIC_BAD:
        try:
            var.cast(candidate)
        except ValueError:
            return candidate
    raise AssertionError(f"{var.name} accepts every probe value; add a BAD_VALUES entry")


@pytest.mark.parametrize("var", VARIABLES, ids=lambda v: v.name)
def test_bad_value_names_the_variable_and_the_value(var: Variable) -> None:
    """Every variable rejects a bad value with a ConfigError naming the variable and value."""
    bad = _bad_value(var)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var.name: bad})
    message = str(info.value)
    assert repr(var.name) in message
    if var.field in ("dashboard_token", "storage", "otlp_headers"):  # secrets (URL, credentials)
        assert "(hidden)" in message and (not bad.strip() or bad not in message)
    else:
        assert repr(bad) in message


@pytest.mark.parametrize("var", [v for v in VARIABLES if v.aliases], ids=lambda v: v.name)
def test_bad_value_under_a_seed_alias_names_the_alias(var: Variable) -> None:
    """A bad value given through a seed alias is reported under the alias the user set."""
    bad = _bad_value(var)
    for alias in var.aliases:
        with pytest.raises(ConfigError, match=repr(alias)):
            Settings.from_env({alias: bad})


@pytest.mark.parametrize("var", VARIABLES, ids=lambda v: v.name)
def test_defaults_match_the_variable_table(var: Variable) -> None:
    """An empty environment gives each field the default its variable documents."""
    assert getattr(Settings.from_env({}), var.field) == var.default


def test_every_settings_field_but_backends_has_a_variable() -> None:
    """The VARIABLES table documents every setting that can come from the environment."""
    fields = {f.name for f in dataclasses.fields(Settings)} - {"backends"}
    assert fields == {v.field for v in VARIABLES}


def test_error_message_is_precise() -> None:
    """The message reads: Config 'X' has value 'y'. <what was expected>."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"INSTRUMENT_FLUSH_INTERVAL": "soon"})
    assert str(info.value) == (
        "Config 'INSTRUMENT_FLUSH_INTERVAL' has value 'soon'. Not a valid number.")


@pytest.mark.parametrize("raw", ["nan", "inf", "-0.5", "0"])
def test_intervals_refuse_non_positive_and_non_finite_numbers(raw: str) -> None:
    """A flush interval of 0, below 0, NaN or infinity would spin or never flush."""
    with pytest.raises(ConfigError):
        Settings.from_env({"INSTRUMENT_FLUSH_INTERVAL": raw})


@pytest.mark.parametrize(("raw", "expected"), [
    ("true", True), ("1", True), ("YES", True), (" on ", True),
    ("false", False), ("0", False), ("No", False), ("off", False),
])
def test_booleans_accept_the_usual_spellings(raw: str, expected: bool) -> None:
    """true/false, 1/0, yes/no and on/off are read in any case."""
    assert Settings.from_env({"INSTRUMENT_RAW_ROWS": raw}).raw_rows is expected


def test_values_are_parsed_to_their_types() -> None:
    """Numbers, booleans and path lists arrive typed."""
    s = Settings.from_env({
        "INSTRUMENT_FLUSH_INTERVAL": "0.25", "INSTRUMENT_BUFFER_SIZE": "1024",
        "INSTRUMENT_EXCLUDE_PATHS": "/health, /static/*", "INSTRUMENT_ENABLED": "false",
    })
    assert s.flush_interval == 0.25
    assert s.buffer_size == 1024
    assert s.exclude_paths == ("/health", "/static/*")
    assert s.enabled is False


@pytest.mark.parametrize(("name", "alias", "field", "ours", "theirs", "expected"), [
    ("INSTRUMENT_METRICS_DB", "METRICS_DB_PATH", "metrics_db", "/a/ours.db", "/b/seed.db",
     "/a/ours.db"),
    ("INSTRUMENT_COLLECTION_INTERVAL", "METRICS_COLLECTION_INTERVAL", "collection_interval",
     "5", "30", 5.0),
])
def test_instrument_name_wins_over_the_seed_alias(name: str, alias: str, field: str, ours: str,
                                                  theirs: str, expected: object) -> None:
    """With both set, INSTRUMENT_* wins; with only the seed alias, the alias is used."""
    assert getattr(Settings.from_env({name: ours, alias: theirs}), field) == expected
    alias_only = getattr(Settings.from_env({alias: theirs}), field)
    assert alias_only == type(expected)(theirs)


def test_a_bad_alias_is_ignored_when_the_instrument_name_is_set() -> None:
    """The seed alias is not even read once the INSTRUMENT_* name supplies the value."""
    s = Settings.from_env({"INSTRUMENT_COLLECTION_INTERVAL": "10",
                           "METRICS_COLLECTION_INTERVAL": "never"})
    assert s.collection_interval == 10.0


def test_code_options_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options passed to configure() win over both an injected mapping and os.environ."""
    env = {"INSTRUMENT_FLUSH_INTERVAL": "3", "INSTRUMENT_MAX_ROUTES": "7"}
    s = Settings.from_env(env, flush_interval=0.5)
    assert (s.flush_interval, s.max_routes) == (0.5, 7)
    monkeypatch.setenv("INSTRUMENT_BUFFER_SIZE", "2048")
    monkeypatch.setenv("INSTRUMENT_MAX_ROUTES", "9")
    settings = instrument.configure(backends=[MemoryBackend()], max_routes=50)
    assert (settings.buffer_size, settings.max_routes) == (2048, 50)


def test_string_code_options_are_parsed_and_checked() -> None:
    """A string given in code goes through the same reader as the environment."""
    assert Settings.from_env({}, buffer_size="4096").buffer_size == 4096
    with pytest.raises(ConfigError, match=r"'buffer_size'.*'lots'"):
        Settings.from_env({}, buffer_size="lots")


@pytest.mark.parametrize(("option", "value"), [
    ("flush_interval", 0), ("flush_interval", -2.5), ("buffer_size", 3), ("max_routes", 0),
    ("retention_days", -1), ("shutdown_timeout", float("nan")), ("buffer_size", 10.5),
])
def test_bad_non_string_code_options_are_rejected(option: str, value: object) -> None:
    """configure(flush_interval=0) fails like the variable would, instead of spinning a thread."""
    with pytest.raises(ConfigError, match=repr(option)):
        Settings.from_env({}, **{option: value})


def test_unknown_option_is_rejected() -> None:
    """A misspelt option raises ConfigError naming it instead of being ignored."""
    with pytest.raises(ConfigError, match="'flush_intervall'"):
        Settings.from_env({}, flush_intervall=2)


def test_failed_configure_leaves_the_running_kit_alone(memory: MemoryBackend) -> None:
    """A configure() call with a bad option raises before touching the running kit."""
    with pytest.raises(ConfigError):
        instrument.configure(backends=[MemoryBackend()], bogus=True)

    @instrument.timed(name="still.recorded")
    def job() -> None:
        return None

    job()
    assert instrument.flush() is True
    assert memory.get_sample_value("call", "still.recorded") == 1


def test_configure_reads_os_environ_when_nothing_is_injected(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without environ=, the kit reads os.environ at configure time, not at import."""
    monkeypatch.setenv("INSTRUMENT_ENABLED", "off")
    assert instrument.configure().enabled is False
    assert instrument.stats()["enabled"] is False
