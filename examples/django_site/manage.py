#!/usr/bin/env python
"""The example project's manage.py: ``python manage.py runserver`` to try it.

In production: ``gunicorn --chdir examples/django_site mysite.wsgi`` (WSGI) or
``uvicorn --app-dir examples/django_site mysite.asgi:application`` (ASGI).
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
