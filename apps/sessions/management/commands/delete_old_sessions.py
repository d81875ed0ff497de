"""delete_old_sessions: delete ended sessions older than OC_HISTORY_RETENTION_DAYS, with their
requests, approvals and recordings.

Run it daily (cron, a systemd timer, the platform's scheduler); `make run` runs it at start.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.sessions.retention import sessions_delete_old


class Command(BaseCommand):
    help = (
        "Delete ended sessions older than OC_HISTORY_RETENTION_DAYS (default 0: keep every "
        "session), with their response requests, tool approvals and recordings."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="keep this many days instead of OC_HISTORY_RETENTION_DAYS",
        )

    def handle(self, *args, days=None, **options):
        if days is None:
            days = settings.OC_HISTORY_RETENTION_DAYS
            if days == 0:
                self.stdout.write("Keeping every session (OC_HISTORY_RETENTION_DAYS is 0).")
                return
        if days < 1:
            raise CommandError(f"--days must be at least 1, got {days}.")
        deleted = sessions_delete_old(days=days)
        self.stdout.write(f"Deleted {deleted} ended session(s) older than {days} day(s).")
