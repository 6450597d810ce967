"""The log channel: every notification as one line on the ``instrument.alerts`` logger.

Implemented in :mod:`instrument.alerting.channels.log`; import it from here.
"""

from instrument.alerting.channels.log import LogChannel

__all__ = ["LogChannel"]
