"""The PagerDuty channel: Events API v2 trigger / acknowledge / resolve with a dedup key.

Implemented in :mod:`instrument.alerting.channels.pagerduty`; import it from here.
"""

from instrument.alerting.channels.pagerduty import PagerDutyChannel

__all__ = ["PagerDutyChannel"]
