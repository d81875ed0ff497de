"""An operator's own settings: for now, the timezone the console shows times in."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class OperatorProfile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True)
    timezone = models.CharField(
        max_length=64, blank=True, help_text="An IANA zone, e.g. Europe/Paris; empty: the browser's own."
    )

    def __str__(self) -> str:
        return f"{self.user} ({self.timezone or 'browser timezone'})"
