"""Top-level routes, two included app URLconfs (one namespaced by include), the dashboard."""

from blog import views as blog_views
from django.urls import include, path, re_path

urlpatterns = [
    path("articles/<int:year>/", blog_views.archive, name="archive"),
    re_path(r"^legacy/(?P<slug>[a-z]+)/$", blog_views.legacy, name="legacy"),
    path("shop/", include("shop.urls")),  # app_name "shop" in the module
    path("blog/", include(("blog.urls", "blog"), namespace="journal")),
    path("monitoring/", include("instrument.django.urls")),
]
