"""Where requests and calls are timed: one module per framework or kind of call.

``wsgi`` and ``asgi`` are the two middlewares every web adapter stands on; ``flask``
and ``fastapi`` name routes by their templates on top of them; ``front`` answers the
paths an adapter skips (``/metrics``, the dashboard); ``routes`` resolves Starlette's
templates; ``decorators`` is ``@instrument.timed``; ``requests`` records outgoing
calls. Adapters only append samples to the buffer: they never touch storage.
Users import :mod:`instrument.wsgi`, :mod:`instrument.asgi` and so on.
"""
