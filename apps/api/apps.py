from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "apps.api"
    label = "oc_api"
    verbose_name = "REST hook"
