"""Blog views: streaming (sync and async), a file, failures of each kind, async, an upload."""

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

from django.core.exceptions import PermissionDenied
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt

#: The file the FileResponse view serves (this module: its size is known to the tests).
FILE = os.path.abspath(__file__)


def archive(request: HttpRequest, year: int) -> HttpResponse:
    return HttpResponse(f"archive {year} pid {os.getpid()}")


def legacy(request: HttpRequest, slug: str) -> HttpResponse:
    pause = float(request.GET.get("pause", "0"))
    if pause:  # a sync view that takes its time (the profiler's tests)
        time.sleep(pause)
    return HttpResponse(f"legacy {slug}")


def stream(request: HttpRequest, n: int) -> StreamingHttpResponse:
    pause = float(request.GET.get("pause", "0"))

    def chunks() -> Iterator[bytes]:
        for i in range(n):
            if pause:
                time.sleep(pause)
            yield f"chunk {i}\n".encode()

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def astream(request: HttpRequest, n: int) -> StreamingHttpResponse:
    pause = float(request.GET.get("pause", "0"))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(n):
            if pause:
                await asyncio.sleep(pause)
            yield f"achunk {i}\n".encode()

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def broken(request: HttpRequest) -> StreamingHttpResponse:
    """A stream whose body fails after its first chunk (sync, or async with ?mode=async)."""

    def chunks() -> Iterator[bytes]:
        yield b"first\n"
        raise ValueError("the body failed")

    async def achunks() -> AsyncIterator[bytes]:
        yield b"first\n"
        raise ValueError("the body failed")

    if request.GET.get("mode") == "async":
        return StreamingHttpResponse(achunks(), content_type="text/plain")
    return StreamingHttpResponse(chunks(), content_type="text/plain")


def file(request: HttpRequest) -> FileResponse:
    return FileResponse(open(FILE, "rb"), content_type="text/plain")


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the view failed")


def missing(request: HttpRequest) -> HttpResponse:
    raise Http404("no such post")


def forbidden(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied


async def async_view(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(0)
    return HttpResponse("async hello")


@csrf_exempt
def upload(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"got {len(request.body)}")


def whoami(request: HttpRequest) -> HttpResponse:
    from instrument.logs import get_request_id, get_traceparent

    return HttpResponse(f"{get_request_id()} {get_traceparent()}")
