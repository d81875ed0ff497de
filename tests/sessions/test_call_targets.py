"""Transfer targets (`apps/sessions/calls.py`, the REST hook's `ReferIn`): tel:, sip: and sips:
URIs, their scheme in any case (RFC 3986 section 3.1), a tel: URI's parameters (`;ext=`)
too, kept as written; anything else refused, naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from apps.api.call_schemas import ReferIn
from apps.sessions.calls import target_uri_problem


@pytest.mark.parametrize(
    "target",
    ["TEL:+14155550123", "Tel:+1-415-555-0123", "SIP:agent@example.com", "Sip:agent@Example.com",
     "SIPS:desk@example.com", "sIpS:desk",
     # RFC 3966 section 3: a tel: URI may carry parameters (a transfer to an extension).
     "tel:+14155550123;ext=42", "tel:7042;phone-context=example.com",
     "tel:+1-415-555-0123;isub=1411;ext=7", "tel:863-1234;phone-context=+1-914-555"],
)
def test_a_scheme_in_any_case_and_tel_parameters_are_taken_and_the_uri_kept_as_written(target):
    assert target_uri_problem(target) is None
    assert ReferIn(target_uri=target).target_uri == target


@pytest.mark.parametrize(
    "target",
    ["tel:+1555;", "tel:+1555;ext=", "tel:+1555;=4", "tel:+1555;ext=4 2",
     "MAILTO:bob@example.com", "TEL:", "SIP:", "Tel:+1 555", "TEL:abc", "HTTPS://x.example"],
)
def test_anything_else_is_refused_in_any_case_naming_the_field(target):
    assert target_uri_problem(target).startswith("'target_uri' must be a tel: URI")
    with pytest.raises(ValidationError) as refused:
        ReferIn(target_uri=target)
    assert [error["loc"] for error in refused.value.errors()] == [("target_uri",)]
