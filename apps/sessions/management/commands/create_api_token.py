from django.core.management.base import BaseCommand, CommandError

from apps.sessions.models import ApiToken
from apps.sessions.tokens import InvalidName, InvalidScope, api_token_create


class Command(BaseCommand):
    help = "Create an API token. The plain token is printed once, alone, on the last line."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="what the token is for")
        parser.add_argument(
            "--scope",
            action="append",
            dest="scopes",
            metavar="S",
            help=(
                f"repeatable; one of {', '.join(ApiToken.ALL_SCOPES)} "
                f"(default: {', '.join(ApiToken.DEFAULT_SCOPES)})"
            ),
        )

    def handle(self, *args, name, scopes, **options):
        try:
            token, plain = api_token_create(name=name, scopes=scopes)
        except (InvalidName, InvalidScope) as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(
            f"Created token {token.name!r} ({token.prefix}…) with scopes {', '.join(token.scopes)}. "
            "It is shown once; store it now."
        )
        self.stdout.write(plain)
