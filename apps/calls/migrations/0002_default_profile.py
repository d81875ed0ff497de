"""A default call profile, so a phone call is answered out of the box (edit it in the admin)."""

from django.db import migrations


def create_default(apps, schema_editor):
    CallProfile = apps.get_model("calls", "CallProfile")
    if not CallProfile.objects.filter(is_default=True).exists():
        CallProfile.objects.create(
            name="Default",
            instructions="You are answering a phone call. Greet the caller, be brief and friendly, and help.",
            voice="marin",
            is_default=True,
        )


class Migration(migrations.Migration):
    dependencies = [("calls", "0001_initial")]

    operations = [migrations.RunPython(create_default, migrations.RunPython.noop)]
