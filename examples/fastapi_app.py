"""A small FastAPI service, instrumented with one line (``app.add_middleware``).

Run it with ``uvicorn examples.fastapi_app:app`` (or ``python examples/fastapi_app.py``;
``PORT=0`` picks a free port); ``instrument demo`` drives traffic at it next to the
Flask example, which calls ``/api/users/{user_id}`` here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator

from fastapi import APIRouter, BackgroundTasks, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

from instrument.asgi import InstrumentMiddleware

USERS = {i: {"id": i, "name": f"user-{i}"} for i in range(1, 51)}
log = logging.getLogger("users")

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/{user_id}")
async def get_user(user_id: int) -> dict[str, object]:
    user = USERS.get(user_id)
    if user is None:
        log.info("no such user", extra={"user_id": user_id})  # carries the caller's request id
        raise HTTPException(status_code=404, detail="no such user")
    return user


@router.post("")
async def create_user(request: Request, tasks: BackgroundTasks) -> dict[str, int]:
    body = await request.body()
    log.info("user created", extra={"bytes": len(body)})
    tasks.add_task(asyncio.sleep, 0.05)  # runs after the response: not counted in its latency
    return {"received": len(body)}


def create_app() -> FastAPI:
    app = FastAPI(title="users")
    app.include_router(router, prefix="/api")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/report")
    async def report() -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            for i in range(10):
                await asyncio.sleep(0.005)
                yield f"line {i}\n".encode()
        return StreamingResponse(lines(), media_type="text/plain")

    @app.get("/api/slow")
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(random.uniform(0.05, 0.2))
        return {"ok": True}

    @app.get("/api/fail")
    async def fail() -> dict[str, bool]:
        raise RuntimeError("the handler failed")

    app.add_middleware(InstrumentMiddleware)  # <- the one line
    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
