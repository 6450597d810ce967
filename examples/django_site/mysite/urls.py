"""The app's routes and the kit's dashboard and API under /monitoring/."""

from django.urls import include, path

urlpatterns = [
    path("notes/", include("notes.urls")),
    path("monitoring/", include("instrument.django.urls")),
]
