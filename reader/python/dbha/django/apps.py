"""The ``dbha.django`` app: registers the system checks."""

from django.apps import AppConfig


class DbhaConfig(AppConfig):
    name = "dbha.django"
    label = "dbha"
    verbose_name = "dbha"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)
