"""The generic webhook channel: JSON shaped like Alertmanager's webhook payload.

Implemented in :mod:`instrument.alerting.channels.webhook`; import it from here.
"""

from instrument.alerting.channels.webhook import WebhookChannel, webhook_payload

__all__ = ["WebhookChannel", "webhook_payload"]
