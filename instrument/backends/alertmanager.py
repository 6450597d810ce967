"""The Prometheus Alertmanager channel: ``POST /api/v2/alerts`` the way Prometheus does.

Implemented in :mod:`instrument.alerting.channels.alertmanager`; import it from here.
"""

from instrument.alerting.channels.alertmanager import AlertmanagerChannel

__all__ = ["AlertmanagerChannel"]
