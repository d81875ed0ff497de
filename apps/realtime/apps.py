from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    """Protocol core: the modules import no Django."""

    name = "apps.realtime"
    label = "realtime"
