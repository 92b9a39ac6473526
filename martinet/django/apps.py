"""The Django app of martinet.django: `"martinet.django"` in INSTALLED_APPS gives Django
its `martinet_worker` management command."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]


class MartinetConfig(AppConfig):
    name = "martinet.django"
    label = "martinet"  # (the default would be "django")
    verbose_name = "martinet"
