from django.urls import path

from apps.console import approvals, calls, recordings, views

app_name = "console"

# A session's id is the upstream's `session.id`, which the console does not choose: `path`
# lets it hold a `/` (and anything else, percent-encoded by `reverse`). Each route has its own
# ending (`/`, `/responses`, `/interrupt`), so none can swallow another's URL.
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("settings/", views.preferences, name="preferences"),
    path("sessions/<path:session_id>/", views.session_page, name="session"),
    path("sessions/<path:session_id>/responses", views.nudge, name="nudge"),
    path("sessions/<path:session_id>/interrupt", views.interrupt, name="interrupt"),
    path("sessions/<path:session_id>/label", views.label, name="label"),
    path("sessions/<path:session_id>/approvals/<str:approval_id>", approvals.decide, name="approval"),
    path("sessions/<path:session_id>/hangup", calls.hangup, name="hangup"),
    path("sessions/<path:session_id>/refer", calls.refer, name="refer"),
    path("sessions/<path:session_id>/recording.wav", recordings.recording, name="recording"),
    path("requests/<str:request_id>/cancel", views.cancel, name="cancel"),
]
