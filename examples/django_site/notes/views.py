"""A JSON view, one that raises Http404, and a streamed export."""

from collections.abc import Iterator

from django.http import Http404, HttpRequest, JsonResponse, StreamingHttpResponse

NOTES = {1: "buy milk", 2: "call the plumber"}


def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"notes": sorted(NOTES)})


def detail(request: HttpRequest, note_id: int) -> JsonResponse:
    if note_id not in NOTES:
        raise Http404("no such note")  # stored as a 404 under /notes/<int:note_id>/
    return JsonResponse({"id": note_id, "text": NOTES[note_id]})


def export(request: HttpRequest) -> StreamingHttpResponse:
    def lines() -> Iterator[str]:
        for note_id, text in sorted(NOTES.items()):
            yield f"{note_id},{text}\n"

    return StreamingHttpResponse(lines(), content_type="text/csv")  # timed to the last line
