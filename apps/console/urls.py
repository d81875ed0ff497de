from django.urls import path

from apps.console import views

app_name = "console"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("sessions/<str:session_id>/", views.session_page, name="session"),
    path("sessions/<str:session_id>/responses", views.nudge, name="nudge"),
    path("sessions/<str:session_id>/interrupt", views.interrupt, name="interrupt"),
    path("requests/<str:request_id>/cancel", views.cancel, name="cancel"),
]
