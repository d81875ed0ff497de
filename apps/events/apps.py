from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "apps.events"
    label = "oc_events"
    verbose_name = "Events and webhooks"

    def ready(self) -> None:
        # The history writer records each batch's events in the batch's own transaction.
        from apps.events import recorder, retention, stream
        from apps.sessions import housekeeping
        from apps.sessions.history import writer

        writer.recorder = recorder.BatchRecorder()
        # Pruning the log, and the webhook worker, ride on every process's housekeeping.
        housekeeping.chores.append(retention.housekeeping_chore)
        # At a graceful stop, the streams this process serves end cleanly, saying why.
        housekeeping.farewells.append(stream.farewell)
