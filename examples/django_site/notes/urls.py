"""Notes: stored in the api_metrics table as /notes/, /notes/<int:note_id>/ and so on."""

from django.urls import path

from notes import views

app_name = "notes"
urlpatterns = [
    path("", views.index, name="index"),
    path("<int:note_id>/", views.detail, name="detail"),
    path("export/", views.export, name="export"),
]
