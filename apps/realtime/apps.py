from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    """Protocol core. Only the management command touches Django; the modules do not."""

    name = "apps.realtime"
    label = "realtime"
