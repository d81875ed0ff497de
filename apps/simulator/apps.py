from django.apps import AppConfig


class SimulatorAppConfig(AppConfig):
    """The upstream simulator: a second service. Only its management command touches Django."""

    name = "apps.simulator"
    label = "simulator"
