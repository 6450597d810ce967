"""A minimal Django project with the kit: the middleware first, the dashboard under /monitoring/."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["notes"]
MIDDLEWARE = [
    "instrument.django.InstrumentMiddleware",  # first: it times everything after it
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "mysite.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# The kit's settings: Settings field names or INSTRUMENT_* names; these win over the
# environment, so read the environment here for what a deploy should decide.
INSTRUMENT = {
    "flush_interval": 1.0,
    "exclude_paths": ["/healthz"],
    "dashboard_token": os.environ.get("INSTRUMENT_DASHBOARD_TOKEN"),
}
