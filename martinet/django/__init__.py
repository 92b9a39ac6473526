"""Django's task framework on martinet (docs/django.md).

    INSTALLED_APPS = [..., "django_tasks", "martinet.django"]  # (no "django_tasks" on Django 6)
    TASKS = {"default": {"BACKEND": "martinet.django.MartinetBackend",
                         "OPTIONS": {"url": "tcp://127.0.0.1:8008"}}}

then `@task` functions' `.enqueue()` submit martinet tasks, and `python manage.py
martinet_worker` runs them. backend.py: the backend; results.py: a martinet task as a
TaskResult; runner.py: the worker side; compat.py: django.tasks or django_tasks.
Imported only by those who use it: `import martinet` never imports Django.
"""

from __future__ import annotations

from martinet.django.backend import MartinetBackend, close_handles

__all__ = ["MartinetBackend", "close_handles"]
