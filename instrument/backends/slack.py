"""The Slack channel: an incoming webhook, at most one message a second, alerts batched.

Implemented in :mod:`instrument.alerting.channels.slack`; import it from here.
"""

from instrument.alerting.channels.slack import SlackChannel

__all__ = ["SlackChannel"]
