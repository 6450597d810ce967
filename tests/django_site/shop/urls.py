"""The shop app's URLconf, namespaced by its own ``app_name``."""

from django.urls import path, re_path

from shop import views

app_name = "shop"
urlpatterns = [
    path("items/<int:item_id>/", views.item, name="item"),
    path("catalog/", views.CatalogView.as_view(), name="catalog"),
    re_path(r"^sku/(?P<code>[A-Z]{3}\d{2})/$", views.sku, name="sku"),
]
