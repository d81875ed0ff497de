"""The statements of the busiest paths, written out instead of compiled by the ORM per call.

Django compiles every query anew, and on this machine that costs about 0.25 ms of CPU per
statement: more than the statement's round trip to PostgreSQL. A REST submit sends four (the
token, the session's lock, the queue count, the insert): 1.29 ms of CPU and 1.82 ms of wall
time through the ORM, 0.61 and 1.07 ms as written here (PostgreSQL on this machine, the whole
database call in a loop of 1 000). It runs on a database thread that shares the GIL with the
event loop, so the saving is also the loop's. The history writer's batches insert the same way
(its updates are written out beside it, in history.py).

Table and column names come from the models' `_meta`, values go through each field's own
`get_db_prep_save` (JSON, dates, UUIDs as each backend wants them), and values read back
through the fields' `to_python` or Django's raw-query converters: the rows are those the ORM
would write and read. Model signals are not sent (none are connected to these models).
"""

from __future__ import annotations

import functools

from django.db import connection
from django.db.models import Model

from apps.sessions.models import ApiToken, LiveSession, ResponseRequest


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def insert_rows(model: type[Model], instances: list[Model]) -> None:
    """INSERT the instances, whose primary keys are set, as `save()` would (one executemany
    for several)."""
    meta = model._meta
    fields = [field for field in meta.concrete_fields if not field.generated]
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        _quote(meta.db_table),
        ", ".join(_quote(field.column) for field in fields),
        ", ".join(["%s"] * len(fields)),
    )
    params = [
        [field.get_db_prep_save(field.pre_save(instance, True), connection) for field in fields]
        for instance in instances
    ]
    with connection.cursor() as cursor:
        if len(params) == 1:
            cursor.execute(sql, params[0])
        else:
            cursor.executemany(sql, params)
    for instance in instances:
        instance._state.adding = False
        instance._state.db = connection.alias


@functools.cache
def _statements(vendor: str) -> dict[str, str]:
    session, request, token = LiveSession._meta, ResponseRequest._meta, ApiToken._meta
    session_columns = [session.get_field(name).column for name in ("id", "upstream_id", "status")]
    # SQLite has no FOR UPDATE; its writers hold the database's one write lock instead
    # (IMMEDIATE transactions, and apps.sessions.db.serialised_write in this process).
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    return {
        "lock_session": "SELECT {} FROM {} WHERE {} = %s{}".format(
            ", ".join(_quote(column) for column in session_columns),
            _quote(session.db_table),
            _quote(session.get_field("upstream_id").column),
            lock,
        ),
        "count_requests": "SELECT COUNT(*) FROM {} WHERE {} = %s AND {} = %s".format(
            _quote(request.db_table),
            _quote(request.get_field("session").column),
            _quote(request.get_field("status").column),
        ),
        "active_token": "SELECT * FROM {} WHERE {} = %s AND {} IS NULL".format(
            _quote(token.db_table),
            _quote(token.get_field("digest").column),
            _quote(token.get_field("revoked_at").column),
        ),
    }


def lock_session(upstream_id: str) -> LiveSession | None:
    """The session with this public id (only `id`, `upstream_id` and `status` loaded), its row
    locked until the transaction ends; None if there is none."""
    with connection.cursor() as cursor:
        cursor.execute(_statements(connection.vendor)["lock_session"], [upstream_id])
        row = cursor.fetchone()
    if row is None:
        return None
    pk, upstream, status = row
    return LiveSession.from_db(
        connection.alias, ["id", "upstream_id", "status"], [LiveSession._meta.pk.to_python(pk), upstream, status]
    )


def count_requests(session: LiveSession, status: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            _statements(connection.vendor)["count_requests"],
            [LiveSession._meta.pk.get_db_prep_value(session.pk, connection), status],
        )
        return cursor.fetchone()[0]


def active_token(digest: str) -> ApiToken | None:
    """The unrevoked token with this digest, or None."""
    return next(iter(ApiToken.objects.raw(_statements(connection.vendor)["active_token"], [digest])), None)
