import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Make sure a demo operator exists (for `make run`) and print its login."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("OC_DEMO_USER", "operator"))
        parser.add_argument("--password", default=os.environ.get("OC_DEMO_PASSWORD", "operator"))

    def handle(self, *args, username, password, **options):
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_password(password)
            user.save()
            self.stdout.write(f"Demo operator created. Log in as {username} / {password}")
        else:
            self.stdout.write(f"Demo operator: log in as {username} (password unchanged)")
