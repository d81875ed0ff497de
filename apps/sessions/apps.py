from django.apps import AppConfig


class SessionsConfig(AppConfig):
    name = "apps.sessions"
    label = "oc_sessions"  # "sessions" is django.contrib.sessions
    verbose_name = "Live sessions"
