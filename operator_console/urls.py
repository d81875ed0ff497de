from django.contrib import admin
from django.urls import include, path

from apps.api.api import api
from apps.api.metrics import metrics
from apps.calls import views as calls_views
from apps.console import views as console_views
from apps.sessions import views

# The admin is the console's: its header and its tabs' titles name the product, not Django.
admin.site.site_header = "Operator Console administration"
admin.site.site_title = "Operator Console admin"

urlpatterns = [
    path("", console_views.home, name="home"),
    path("console/call/", calls_views.call_page, name="call"),
    path("console/call/session", calls_views.call_session, name="call_session"),
    path("console/", include("apps.console.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("v1/", include("apps.calls.urls")),
]

# Refusals Django makes before a view runs: the REST hook's error body under /api/.
handler400 = "apps.api.api.handler400"
handler403 = "apps.api.api.handler403"
handler404 = "apps.api.api.handler404"
handler500 = "apps.api.api.handler500"
