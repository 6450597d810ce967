"""The email channel: SMTP with STARTTLS and certificate checks, several alerts per message.

Implemented in :mod:`instrument.alerting.channels.email`; import it from here.
"""

from instrument.alerting.channels.email import EmailChannel

__all__ = ["EmailChannel"]
