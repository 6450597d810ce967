"""Secret redaction for log records: by key in structured fields, by ``key=value`` in text.

A key matches when it contains one of the patterns, case-insensitively, so
``password`` also covers ``db_password`` and ``X-Auth-Token``. In free text the
value after ``key=``, ``key: ``, ``"key": "`` or ``Authorization: Bearer`` is
replaced. It is a safety net for mistakes, not a guarantee: a secret logged
without its name next to it cannot be recognised.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["DEFAULT_PATTERNS", "REDACTED", "Redactor"]

#: Key fragments redacted unless ``setup_logging(redact=...)`` says otherwise.
DEFAULT_PATTERNS: tuple[str, ...] = (
    "password", "passwd", "secret", "token", "authorization", "api_key", "apikey", "cookie",
)
#: What a redacted value becomes.
REDACTED = "[REDACTED]"

_MAX_DEPTH = 6


class Redactor:
    """Replaces secret values; ``Redactor(())`` redacts nothing and costs nothing."""

    __slots__ = ("_key", "_probe", "_text", "patterns", "replacement")

    def __init__(self, patterns: Iterable[str] = DEFAULT_PATTERNS, *,
                 replacement: str = REDACTED) -> None:
        self.patterns = tuple(p.lower() for p in patterns if p)
        self.replacement = replacement
        if self.patterns:
            alt = "|".join(re.escape(p) for p in self.patterns)
            self._key: Any = re.compile(alt, re.IGNORECASE).search
            self._probe: Any = re.compile(alt).search  # on lowered text: much faster than (?i)
            # key (the part before the pattern needs no matching: it is kept as is), an
            # optional closing quote, ':' or '=', an optional opening quote or auth scheme,
            # then the value up to whitespace, a quote or a separator.
            self._text: Any = re.compile(
                rf"((?:{alt})[\w.-]*[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token)\s+)?)"
                r"([^\s\"',;&]+)", re.IGNORECASE).sub
        else:
            self._key = None
            self._probe = None
            self._text = None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def key_matches(self, key: str) -> bool:
        """True when values stored under ``key`` are secret."""
        return self._key is not None and self._key(key) is not None

    def text(self, value: str) -> str:
        """``value`` with every ``secret-key=value`` pair's value replaced."""
        # Most lines have no ':' or '=' at all, or none of the key words: two cheap
        # checks spare them the regex substitution.
        if self._text is None or ("=" not in value and ":" not in value):
            return value
        if self._probe(value.lower()) is None:
            return value
        return str(self._text(lambda m: m.group(1) + self.replacement, value))

    def value(self, value: Any, depth: int = 0) -> Any:
        """A copy of ``value`` (mappings, lists, text) with secrets replaced."""
        if self._key is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if depth >= _MAX_DEPTH:
            return value
        if isinstance(value, Mapping):
            return {k: (self.replacement if isinstance(k, str) and self._key(k) is not None
                        else self.value(v, depth + 1)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v, depth + 1) for v in value]
        return value

    def fields(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Top-level structured fields (``extra=``) with secret keys replaced."""
        return self.value(fields) if self._key is not None else dict(fields)
