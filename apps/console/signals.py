"""An operator who logs out loses their live sockets too, in every process, and is told on
the login page that they signed out. So does one whose account is turned off or deleted
(in the admin, say) while their sockets are open: a new socket would be refused them, and
one already open must not go on steering or hearing a call. So too when their password is
changed (an admin's answer to a leaked login): Django ends their other logins then, and the
sockets those logins opened end with them."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from apps.sessions.groups import user_group

log = logging.getLogger(__name__)


@receiver(user_logged_out)
def close_console_sockets(sender, request, user, **kwargs) -> None:
    # Kept in the messages cookie, which the logout's flush of the session leaves.
    messages.info(request, "You have signed out.", fail_silently=True)
    if user is not None:
        _close_sockets_of(user)


@receiver(pre_save, sender=get_user_model())
def note_a_new_password(sender, instance, update_fields=None, **kwargs) -> None:
    """Whether this save changes the stored password (a login's save of `last_login` names
    its fields and does not): read by `close_sockets_of_a_turned_off_user`."""
    instance._oc_new_password = (
        instance.pk is not None
        and (update_fields is None or "password" in update_fields)
        and sender.objects.filter(pk=instance.pk).exclude(password=instance.password).exists()
    )


@receiver(post_save, sender=get_user_model())
def close_sockets_of_a_turned_off_user(sender, instance, **kwargs) -> None:
    if not instance.is_active or getattr(instance, "_oc_new_password", False):
        _close_sockets_of(instance)


@receiver(post_delete, sender=get_user_model())
def close_sockets_of_a_deleted_user(sender, instance, **kwargs) -> None:
    _close_sockets_of(instance)


def _close_sockets_of(user) -> None:
    try:
        async_to_sync(get_channel_layer().group_send)(user_group(user.pk), {"type": "user.logged_out"})
    except Exception as exc:  # the socket's session is gone anyway: its next reconnect is refused
        log.warning("could not close the console sockets of %s: %r", user, exc)
