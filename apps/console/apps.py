from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "apps.console"
    label = "oc_console"
    verbose_name = "Operator console"

    def ready(self) -> None:
        from apps.console import signals  # noqa: F401  (connects the receivers)
