"""An operator who logs out loses their live sockets too, in every process, and is told on
the login page that they signed out."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib import messages
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

from apps.console.consumers import user_group

log = logging.getLogger(__name__)


@receiver(user_logged_out)
def close_console_sockets(sender, request, user, **kwargs) -> None:
    # Kept in the messages cookie, which the logout's flush of the session leaves.
    messages.info(request, "You have signed out.", fail_silently=True)
    if user is None:
        return
    try:
        async_to_sync(get_channel_layer().group_send)(user_group(user.pk), {"type": "user.logged_out"})
    except Exception as exc:  # the socket's session is gone anyway: its next reconnect is refused
        log.warning("could not close the console sockets of %s: %r", user, exc)
