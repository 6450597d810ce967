"""FastAPI and Starlette helper: adds the pure ASGI middleware to the app you give it."""

from __future__ import annotations

from typing import Any

from instrument._errors import missing_extra
from instrument.adapters.asgi import InstrumentMiddleware

try:
    import starlette.applications
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra("starlette", "fastapi") from exc

__all__ = ["InstrumentMiddleware", "instrument_app"]


def instrument_app(app: starlette.applications.Starlette, **options: Any) -> Any:
    """Add the middleware to a FastAPI or Starlette app and return the app."""
    app.add_middleware(InstrumentMiddleware, **options)
    return app
