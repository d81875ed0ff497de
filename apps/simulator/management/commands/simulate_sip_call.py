"""`python manage.py simulate_sip_call --to NUMBER --from NUMBER`: a phone call, simulated.

Asks the simulator (`POST {upstream}/_sim/sip_calls`, simulator-only) to place a SIP call: it
sends the console the signed `realtime.call.incoming` webhook the service would send, and once
the console accepts the call, the simulated caller speaks into it. Prints the call id and exits
0 when the webhook was answered 2xx; exits non-zero with the reason otherwise.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.simulator import discovery

DEFAULT_WEBHOOK_URL = "http://127.0.0.1:8000/v1/webhooks/openai"
TIMEOUT = 20.0  # the simulator answers once the console answered the webhook


def http_base(upstream: str) -> str:
    """`ws(s)://host:port/v1` → `http(s)://host:port/v1`."""
    for ws, http in (("wss://", "https://"), ("ws://", "http://")):
        if upstream.startswith(ws):
            return http + upstream[len(ws) :]
    return upstream


class Command(BaseCommand):
    help = (
        "Simulate a phone call to the agent: the simulator sends the console a signed "
        "realtime.call.incoming webhook; once accepted, the caller speaks. Prints the call id."
    )

    def add_arguments(self, parser):
        parser.add_argument("--to", required=True, help="the number dialled, e.g. +15550100")
        parser.add_argument("--from", dest="caller", required=True, help="the caller's number")
        parser.add_argument(
            "--upstream",
            default=None,
            help="the simulator's base URL, ws://HOST:PORT/v1 (default: OC_UPSTREAM_URL, else "
            "the console's embedded simulator, from var/simulator.url)",
        )
        parser.add_argument(
            "--webhook-url",
            default=DEFAULT_WEBHOOK_URL,
            help=f"where the webhook goes (default {DEFAULT_WEBHOOK_URL})",
        )
        parser.add_argument(
            "--secret",
            default=None,
            help="the webhook secret, whsec_... (default: OPENAI_WEBHOOK_SECRET, else "
            "var/webhook-secret, which make run writes)",
        )
        parser.add_argument(
            "--say",
            action="append",
            default=None,
            help="a sentence the caller says (repeatable; default: one question)",
        )
        parser.add_argument(
            "--api-key",
            default=None,
            help="the bearer the simulator is sent (default: OPENAI_API_KEY, else any)",
        )

    def handle(self, *args, **options):
        upstream = (
            options["upstream"]
            or settings.OC_UPSTREAM_URL
            or discovery.read_url(settings.VAR_DIR)
        )
        if not upstream:
            raise CommandError(
                "No simulator to call: give --upstream ws://HOST:PORT/v1, set OC_UPSTREAM_URL, "
                f"or start the console (its embedded simulator writes "
                f"{settings.VAR_DIR / discovery.URL_FILE} once it runs)."
            )
        # `make run` keeps a development secret in var/webhook-secret and gives it the console.
        secret = options["secret"] or settings.OPENAI_WEBHOOK_SECRET or discovery.read_dev_secret(settings.VAR_DIR)
        if not secret:
            raise CommandError(
                "No webhook secret: give --secret whsec_..., set OPENAI_WEBHOOK_SECRET, or start "
                "the console with make run, which writes var/webhook-secret (the console refuses "
                "unsigned webhooks)."
            )
        body = {
            "from": options["caller"],
            "to": options["to"],
            "webhook_url": options["webhook_url"],
            "webhook_secret": secret,
        }
        if options["say"]:
            body["say"] = options["say"]
        url = http_base(upstream).rstrip("/") + "/_sim/sip_calls"
        api_key = options["api_key"] or settings.OPENAI_API_KEY or "sk-simulator"
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise CommandError(f"The simulator at {url} refused the call ({exc.code}): {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise CommandError(
                f"Cannot reach the simulator at {url}: {getattr(exc, 'reason', exc)}. "
                "Is the console (or simulate_upstream) running there?"
            ) from None
        call_id = answer.get("call_id")
        status = answer.get("webhook_status")
        if not isinstance(status, int):
            raise CommandError(
                f"Call {call_id}: the webhook was not delivered: {answer.get('webhook_error')}"
            )
        if not 200 <= status < 300:
            raise CommandError(
                f"Call {call_id}: the webhook to {options['webhook_url']} was answered {status}, "
                "not 2xx (a wrong secret? the console refuses a bad signature with 400)."
            )
        self.stdout.write(str(call_id))
