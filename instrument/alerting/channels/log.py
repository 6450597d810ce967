"""The log channel: every notification as one line on the ``instrument.alerts`` logger.

On by default, so an alert is never invisible even when no other channel is
configured. The level follows severity (low: INFO ... critical: CRITICAL);
resolved and acknowledged notifications log at INFO.
"""

from __future__ import annotations

import logging

from instrument.alerting.channels.base import summary
from instrument.alerting.state import AlertEvent

__all__ = ["LogChannel"]

_LEVELS = {"low": logging.INFO, "medium": logging.WARNING, "high": logging.ERROR,
           "critical": logging.CRITICAL}


class LogChannel:
    """Logs each alert event; never fails unless logging itself does."""

    name = "log"
    kinds = frozenset({"firing", "repeat", "resolved", "acknowledged"})

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("instrument.alerts")

    def __repr__(self) -> str:
        return f"LogChannel(logger={self.logger.name!r})"

    def send(self, event: AlertEvent) -> None:
        level = _LEVELS[event.alert.severity.value] if event.kind in ("firing", "repeat") \
            else logging.INFO
        self.logger.log(level, "%s (alert %s)", summary(event), event.alert.id)
