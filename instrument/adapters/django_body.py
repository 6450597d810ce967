"""Bodies for the Django middleware: streams counted as they flow, request sizes, scrapes.

``count`` and ``acount`` wrap a streamed response's (sync or async) iterator: each
chunk adds its length to the exchange, the first one notes the time to first
byte, and the end of the body notes it was sent whole. A body that raises is
recorded there and then (ASGI Django never closes such a response); one that is
abandoned (a client that left) is left to the response's close, which records
it as a disconnect.
"""

from __future__ import annotations

from asyncio import CancelledError
from collections.abc import AsyncIterator, Iterable, Iterator
from time import perf_counter
from typing import Any

__all__ = ["acount", "count", "request_bytes", "scrape"]


def request_bytes(cl: str | None, req: Any) -> int:
    """Content-Length when given; a chunked body under ASGI by the size Django spooled."""
    if cl:
        try:
            return max(0, int(cl))
        except ValueError:
            return 0
    stream = getattr(req, "_stream", None)  # ASGI: the whole body, read before the view
    if stream is None or not hasattr(stream, "seek") or hasattr(stream, "limit"):
        return 0  # WSGI: Django reads nothing of a body without a length
    try:
        pos = stream.tell()
        size = stream.seek(0, 2)
        stream.seek(pos)
        return int(size)
    except (OSError, ValueError):
        return 0


def count(ex: Any, body: Iterable[bytes]) -> Iterator[bytes]:
    """A streamed body's chunks, counted as they flow; the first one's time is the TTFB."""
    ex.done = False
    try:
        for chunk in body:
            if not ex.tf:
                ex.tf = perf_counter()
            ex.rb += len(chunk)
            yield chunk
    except GeneratorExit:  # closed before the end: a client that went away
        raise
    except BaseException as e:
        ex.exc = e
        ex.done = True
        ex.close()  # ASGI Django never closes a response whose body raised
        raise
    ex.done = True


async def acount(ex: Any, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """:func:`count` for an async iterator (a streamed body under ASGI)."""
    ex.done = False
    try:
        async for chunk in body:
            if not ex.tf:
                ex.tf = perf_counter()
            ex.rb += len(chunk)
            yield chunk
    except (GeneratorExit, CancelledError):  # the client left: Django cancels, then closes
        raise
    except BaseException as e:
        ex.exc = e
        ex.done = True
        ex.close()
        raise
    ex.done = True


def scrape(metrics: Any, request: Any) -> Any:
    """The Prometheus exposition, answered in front of the app and never recorded."""
    from django.http import HttpResponse

    answer: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer.extend((status, headers))

    environ = {"PATH_INFO": metrics.path, "HTTP_ACCEPT": request.META.get("HTTP_ACCEPT", "")}
    body = b"".join(metrics(environ, start_response))
    response = HttpResponse(body, status=int(answer[0].split()[0]))
    for key, value in answer[1]:
        response[key] = value
    return response
