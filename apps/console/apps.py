from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "apps.console"
    label = "oc_console"
    verbose_name = "Operator console"
