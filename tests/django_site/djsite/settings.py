"""Settings of the Django project the adapter tests run under gunicorn, uvicorn and the test client.

Sessions and auth are real (the staff-user test signs a user in); their tables go to
``DJSITE_DB`` (default: an in-memory database, enough for the test client). The kit
reads the same INSTRUMENT_* variables as everywhere, plus ``INSTRUMENT`` below.
"""

import os

BASE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_KEY = "test-only-not-secret"  # a throwaway test project
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "shop",
    "blog",
]
MIDDLEWARE = [
    "instrument.django.InstrumentMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "djsite.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.environ.get("DJSITE_DB", ":memory:")}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
TEMPLATES: list[dict[str, object]] = []
# Django's 404 and 500 warnings would fill the servers' logs during the load tests.
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "loggers": {"django.request": {"level": "CRITICAL"}}}
if os.environ.get("DJSITE_INSTRUMENT"):  # the settings-dict test: "key=value,key=value"
    INSTRUMENT = dict(p.split("=", 1) for p in os.environ["DJSITE_INSTRUMENT"].split(","))
