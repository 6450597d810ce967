"""A framework-free ASGI app wrapped by ``instrument.asgi.InstrumentMiddleware``.

Run: ``uvicorn examples.asgi_app:app`` or ``python examples/asgi_app.py`` (``PORT=0``: a free port).
"""

from __future__ import annotations

import os
from typing import Any

from instrument.asgi import InstrumentMiddleware


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    size = 0
    more = True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": f"hello {size}\n".encode()})


app = InstrumentMiddleware(hello)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8002")))
