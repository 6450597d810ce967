"""The blog app's URLconf, given the namespace "journal" where it is included."""

from django.urls import path

from blog import views

urlpatterns = [
    path("stream/<int:n>/", views.stream, name="stream"),
    path("astream/<int:n>/", views.astream, name="astream"),
    path("file/", views.file, name="file"),
    path("broken/", views.broken, name="broken"),
    path("boom/", views.boom, name="boom"),
    path("missing/", views.missing, name="missing"),
    path("forbidden/", views.forbidden, name="forbidden"),
    path("async/", views.async_view, name="async"),
    path("upload/", views.upload, name="upload"),
    path("whoami/", views.whoami, name="whoami"),
]
