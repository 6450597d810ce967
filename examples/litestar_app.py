"""A small Litestar service, instrumented with one call (``instrument_app(app)``).

Run it with ``uvicorn examples.litestar_app:app`` (or ``python examples/litestar_app.py``;
``PORT=0`` picks a free port). Routes are recorded by the template Litestar matched
(``/books/{book_id}``), a path no route matches as ``__unmatched__``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

from litestar import Litestar, get, post
from litestar.exceptions import NotFoundException
from litestar.response import Stream

from instrument.litestar import instrument_app

BOOKS = {i: {"id": i, "title": f"book-{i}"} for i in range(1, 21)}
log = logging.getLogger("books")


@get("/books/{book_id:int}")
async def get_book(book_id: int) -> dict[str, object]:
    book = BOOKS.get(book_id)
    if book is None:
        raise NotFoundException("no such book")  # recorded as 404 on /books/{book_id}
    return book


@post("/books")
async def add_book(data: dict[str, str]) -> dict[str, int]:
    log.info("book added", extra={"fields": len(data)})  # carries the request id
    return {"received": len(data)}


@get("/report")
async def report() -> Stream:
    async def lines() -> AsyncIterator[bytes]:
        for i in range(5):
            await asyncio.sleep(0.005)
            yield f"line {i}\n".encode()
    return Stream(lines(), media_type="text/plain")  # timed to its last byte


@get("/fail")
async def fail() -> None:
    raise RuntimeError("the handler failed")  # a 500, with the exception's type recorded


app = instrument_app(Litestar([get_book, add_book, report, fail]))  # <- the one call

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8002")))
