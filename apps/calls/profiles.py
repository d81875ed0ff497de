"""Which call profile answers a phone call: by the number dialled, from the SIP headers of
`realtime.call.incoming`."""

from __future__ import annotations

import re
from urllib.parse import unquote

from django.conf import settings

from apps.calls.models import CallProfile

# The user part of a SIP or tel URI: `"Ann" <sip:+15551234567@host>;tag=x` → `+15551234567`.
_URI_USER = re.compile(r"(?:sips?|tel):([^@;>?\s]+)", re.IGNORECASE)
# A header's display name, quoted (RFC 3261 section 25.1): it may hold anything, "sip:" too.
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
# In a name-addr (`Ann <sip:…>`) the URI is what the angle brackets hold.
_BRACKETED = re.compile(r"<([^>]*)>")
_VISUAL_SEPARATORS = re.compile(r"[\s().\-]")
# SIP's compact header names (RFC 3261 section 7.3.3): the service passes names on as sent.
_COMPACT = {"from": "f", "to": "t"}


def sip_header(data: dict, name: str) -> str:
    """The first header called `name` (any case, or its compact form: `f` for From, `t` for
    To) in the event's `data.sip_headers`."""
    names = {name.lower(), _COMPACT.get(name.lower(), name.lower())}
    for header in data.get("sip_headers") or ():
        if isinstance(header, dict) and str(header.get("name", "")).lower() in names:
            return str(header.get("value", ""))
    return ""


def sip_number(value: str) -> str:
    """The number of a From or To header (`+15551234567`), without visual separators and
    with an escaped `+` (`%2B`) read as one; the URI's user part as it is when it is not a
    number; "" without one. The URI is the one in angle brackets when there are any, so a
    display name is never read as the address."""
    value = _QUOTED.sub("", value)
    bracketed = _BRACKETED.search(value)
    uri = bracketed.group(1) if bracketed else value
    match = _URI_USER.search(uri)
    user = match.group(1) if match else uri.strip()
    number = _VISUAL_SEPARATORS.sub("", unquote(user))
    return number if re.fullmatch(r"\+?[0-9]+", number) else user


def _without_plus(number: str) -> str:
    """An E.164 number as carriers may send it, with or without its `+` (`15551234567`)."""
    return number.removeprefix("+")


def profile_for(number: str) -> CallProfile | None:
    """The profile naming `number` exactly, else the one whose prefix (`+1555*`) matches
    longest, else the default one; None when no profile names the number and
    OC_SIP_REJECT_UNKNOWN is set (the call is rejected). A number names the same line with
    or without its leading `+`; of two profiles naming it, the one written as dialled wins.
    Without a default profile, an unsaved one with the project's defaults answers. Database
    work."""
    profiles = list(CallProfile.objects.exclude(dialled_number=""))
    wanted = _without_plus(number)
    exact = [p for p in profiles if _without_plus(p.dialled_number) == wanted]
    if number and exact:
        return min(exact, key=lambda p: p.dialled_number != number)
    prefixes = {
        p: _without_plus(p.dialled_number[:-1]) for p in profiles if p.dialled_number.endswith("*")
    }
    matching = [p for p, prefix in prefixes.items() if wanted.startswith(prefix)]
    if number and matching:
        return max(matching, key=lambda p: (len(prefixes[p]), p.dialled_number[0] == number[0]))
    if settings.OC_SIP_REJECT_UNKNOWN:
        return None
    default = CallProfile.objects.filter(is_default=True).first()
    return default or CallProfile(name="(no default profile)")
