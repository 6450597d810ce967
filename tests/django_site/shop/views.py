"""Shop views: a function view, a class-based view and a regex-routed view."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import View


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse({"id": item_id, "name": f"item-{item_id}"})


class CatalogView(View):
    """A class-based view: GET lists, POST (CSRF-exempt in dispatch) echoes the size."""

    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("catalog: " + ",".join(str(i) for i in range(10)))


def sku(request: HttpRequest, code: str) -> HttpResponse:
    return HttpResponse(f"sku {code}")
