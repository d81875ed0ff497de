from django.apps import AppConfig


class SessionsConfig(AppConfig):
    name = "apps.sessions"
    label = "oc_sessions"  # "sessions" is django.contrib.sessions
    verbose_name = "Live sessions"

    def ready(self) -> None:
        from django.core import checks

        from apps.sessions import housekeeping, recorder
        from apps.sessions.checks import several_processes_need_redis

        checks.register(several_processes_need_redis)
        # The recordings of calls whose process died are salvaged by every process's upkeep.
        housekeeping.chores.append(recorder.housekeeping_chore)
