"""Call profiles in the admin: what a staff user may save, and the errors naming the field."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from apps.calls.models import CallProfile

pytestmark = pytest.mark.django_db

ADD = "/admin/calls/callprofile/add/"


@pytest.fixture
def admin_client(client):
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-123"))
    return client


def form(**fields) -> dict:
    return {"name": "Support", "dialled_number": "", "instructions": "", "voice": "marin", "model": "", "tools": "[]", **fields}


def test_a_profile_is_saved_with_its_tools(admin_client):
    tools = '[{"type": "function", "name": "lookup_order", "parameters": {"type": "object", "properties": {}}}]'
    response = admin_client.post(ADD, form(dialled_number=" +1555* ", tools=tools))
    assert response.status_code == 302
    profile = CallProfile.objects.get(name="Support")
    assert profile.dialled_number == "+1555*" and profile.tools[0]["name"] == "lookup_order"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"tools": '{"type": "function"}'}, "JSON list of objects"),
        ({"tools": '[{"name": "no type"}]'}, "each with a &quot;type&quot;"),
        ({"dialled_number": "sales line"}, "digits"),
        ({"dialled_number": "+15*55"}, "digits"),
        # What the service would refuse in every call's accept (the calls would ring out).
        ({"tools": '[{"type": "function", "name": "f", "strict": true}]'},
         "Unknown parameter: &#x27;session.tools[0].strict&#x27;"),
        ({"tools": '[{"type": "web_search"}]'}, "Supported values are: &#x27;function&#x27;"),
        ({"instructions": "x" * 32769}, "string too long"),
    ],
)
def test_bad_fields_are_refused_naming_them(admin_client, fields, words):
    response = admin_client.post(ADD, form(**fields))
    assert response.status_code == 200 and words in response.content.decode()
    assert not CallProfile.objects.filter(name="Support").exists()


def test_a_bad_number_and_bad_tools_are_both_named_at_once(admin_client):
    """Only the tools' error was shown: the number's came once they were fixed."""
    page = admin_client.post(ADD, form(dialled_number="sales line", tools="{}")).content.decode()
    assert '<div class="form-row errors field-tools">' in page
    assert '<div class="form-row errors field-dialled_number">' in page


def test_only_one_profile_is_the_default(admin_client):
    CallProfile.objects.filter(is_default=True).delete()
    CallProfile.objects.create(name="Main", is_default=True)
    response = admin_client.post(ADD, form(is_default="on"))
    assert response.status_code == 200
    assert "Another profile is the default already" in response.content.decode()


@pytest.mark.parametrize("number", ["+15551234567", "+1555*"])
def test_two_profiles_cannot_answer_the_same_number(admin_client, number):
    CallProfile.objects.create(name="Sales", dialled_number=number)
    response = admin_client.post(ADD, form(dialled_number=f" {number}"))
    assert response.status_code == 200
    assert "Sales answers this number already" in response.content.decode()
    assert not CallProfile.objects.filter(name="Support").exists(), "which of the two would answer?"
