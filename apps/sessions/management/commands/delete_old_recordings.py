"""delete_old_recordings: delete recordings older than OC_RECORDING_RETENTION_DAYS.

Run it daily (cron, a systemd timer, the platform's scheduler); `make run` runs it at start.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.sessions.recordings import recordings_delete_old


class Command(BaseCommand):
    help = "Delete the recordings of sessions older than OC_RECORDING_RETENTION_DAYS (default 30)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="keep this many days instead of OC_RECORDING_RETENTION_DAYS",
        )

    def handle(self, *args, days=None, **options):
        days = settings.OC_RECORDING_RETENTION_DAYS if days is None else days
        if days < 1:
            raise CommandError(f"--days must be at least 1, got {days}.")
        deleted = recordings_delete_old(days=days)
        self.stdout.write(f"Deleted {deleted} recording(s) older than {days} day(s).")
