from django.urls import path, re_path

from apps.calls import views, webhooks

app_name = "calls"

# Mounted at /v1/: the service's paths, over HTTP (the relay's /v1/realtime is a WebSocket).
urlpatterns = [
    path("realtime/client_secrets", views.client_secrets, name="client_secrets"),
    path("realtime/calls", views.calls, name="calls"),
    path("webhooks/openai", webhooks.openai_webhook, name="webhook"),
    re_path(r"", views.unknown_url),  # the rest: a 404 in the service's shape
]
