"""Which call profile answers a phone call: by the number dialled, from the SIP headers of
`realtime.call.incoming`."""

from __future__ import annotations

import re

from django.conf import settings

from apps.calls.models import CallProfile

# The user part of a SIP or tel URI: `"Ann" <sip:+15551234567@host>;tag=x` → `+15551234567`.
_URI_USER = re.compile(r"(?:sips?|tel):([^@;>?\s]+)", re.IGNORECASE)
_VISUAL_SEPARATORS = re.compile(r"[\s().\-]")


def sip_header(data: dict, name: str) -> str:
    """The first header called `name` (any case) in the event's `data.sip_headers`."""
    for header in data.get("sip_headers") or ():
        if isinstance(header, dict) and str(header.get("name", "")).lower() == name.lower():
            return str(header.get("value", ""))
    return ""


def sip_number(value: str) -> str:
    """The number of a From or To header (`+15551234567`), without visual separators; the
    URI's user part as it is when it is not a number; "" without one."""
    match = _URI_USER.search(value)
    user = match.group(1) if match else value.strip()
    number = _VISUAL_SEPARATORS.sub("", user)
    return number if re.fullmatch(r"\+?[0-9]+", number) else user


def profile_for(number: str) -> CallProfile | None:
    """The profile naming `number` exactly, else the one whose prefix (`+1555*`) matches
    longest, else the default one; None when no profile names the number and
    OC_SIP_REJECT_UNKNOWN is set (the call is rejected). Without a default profile, an unsaved
    one with the project's defaults answers. Database work."""
    profiles = list(CallProfile.objects.exclude(dialled_number=""))
    exact = [p for p in profiles if p.dialled_number == number]
    if number and exact:
        return exact[0]
    prefixes = [
        p for p in profiles if p.dialled_number.endswith("*") and number.startswith(p.dialled_number[:-1])
    ]
    if number and prefixes:
        return max(prefixes, key=lambda p: len(p.dialled_number))
    if settings.OC_SIP_REJECT_UNKNOWN:
        return None
    return CallProfile.objects.filter(is_default=True).first() or CallProfile(name="(no default profile)")
