from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from apps.sessions.models import LiveSession


def home(request: HttpRequest) -> HttpResponse:
    live = LiveSession.objects.filter(status=LiveSession.Status.LIVE).count()
    scheme = "wss" if request.is_secure() else "ws"
    return render(
        request,
        "home.html",
        {
            "relay_url": f"{scheme}://{request.get_host()}/v1",
            "live_sessions": live,
            "upstream": settings.OC_UPSTREAM_URL or "embedded simulator",
        },
    )


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})
