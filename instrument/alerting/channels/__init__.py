"""Where alerts go: one module per channel.

``base`` has the channel Protocol, the delivery error the dispatcher retries and
the alert's fields as channels render them; ``http`` is the one HTTP client with
timeouts, retries and secret-free logs that the web channels share. ``email``,
``slack``, ``webhook``, ``pagerduty``, ``alertmanager`` and ``log`` are the channels.
Users import them as ``instrument.backends.email`` and so on.
"""
