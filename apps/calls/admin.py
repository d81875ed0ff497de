from django.contrib import admin

from apps.calls.models import CallProfile


@admin.register(CallProfile)
class CallProfileAdmin(admin.ModelAdmin):
    list_display = ["name", "dialled_number", "voice", "model", "is_default", "updated_at"]
    list_filter = ["is_default"]
    search_fields = ["name", "dialled_number", "instructions"]
