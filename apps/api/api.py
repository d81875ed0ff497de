"""The REST hook, `/api/v1/` (CONTRACT section 2), built on django-ninja.

Why django-ninja: its schemas are pydantic models, the same ones the relay already uses for
per-response overrides, so validation, the OpenAPI document and the docs page come from one
definition; it runs async views natively under Daphne, and it is small and actively maintained.

Views are thin: they authenticate (`TokenAuth`), translate the input, call `apps.sessions`
services and selectors, and answer with the models' `to_dict()`. Every answer that is not a
success has the body `{"error": {"code", "message", "fields"?}}`: refusals, 404 and 405,
and 500 too.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, Literal

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import register_converter
from django.utils.cache import patch_vary_headers
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from ninja import Body, Header, NinjaAPI, Query, Status, Swagger
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.renderers import JSONRenderer
from ninja.responses import NinjaJSONEncoder
from ninja.security import HttpBearer

from apps.api.approvals import ApprovalList, ApprovalOut, DecisionIn
from apps.api.call_schemas import CallActionOut, ReferIn
from apps.api.schemas import (
    ErrorOut,
    InterruptOut,
    LabelIn,
    Moment,
    NoteIn,
    NoteOut,
    Origin,
    RequestList,
    RequestOut,
    RequestPage,
    SessionList,
    SessionOut,
    SessionStatus,
)
from apps.api.schemas import Status as RequestStatusValue
from apps.calls import views as calls_views
from apps.events import stream as event_stream
from apps.events.flow import flow_of
from apps.sessions import approvals, calls, export, recordings, selectors, services, tokens
from apps.sessions.db import db_async
from apps.sessions.models import ApiToken
from apps.sessions.overrides import ResponseOverrides

log = logging.getLogger(__name__)
events_log = logging.getLogger("oc.events")

MAX_BODY_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY_CHARS = 255


# ---------------------------------------------------------------------------- input, output


class BodyTooLarge(Exception):
    pass


class JsonParser(Parser):
    def parse_body(self, request: HttpRequest) -> Any:
        if len(request.body) > MAX_BODY_BYTES:
            raise BodyTooLarge
        try:
            return json.loads(request.body)
        except RecursionError:
            # The decoder recurses once per level of nesting: a body of many '[' overflows
            # it. That is a body we cannot parse, like any other malformed one.
            raise ValueError("it is nested too deeply") from None


class IsoTimesEncoder(NinjaJSONEncoder):
    """Times as `isoformat()` writes them, the same as the models' `to_dict()`: with the offset
    (`+00:00`) and every digit. Django's encoder would write `Z` and cut to milliseconds."""

    def default(self, o: Any) -> Any:
        if isinstance(o, datetime):
            return o.isoformat()
        return super().default(o)


class JsonRenderer(JSONRenderer):
    encoder_class = IsoTimesEncoder


# ---------------------------------------------------------------------------- auth


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class TokenAuth(HttpBearer):
    """`Authorization: Bearer <token>` with the given scope: 401 without a valid token
    (`None`), 403 without the scope (`tokens.MissingScope`), 429 over the token's rate
    (`RateLimited`). Its time is the `auth` phase of `Server-Timing`."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        super().__init__()

    async def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        timing = _timing(request)  # the view's work starts here
        started = time.perf_counter()
        try:
            found = await db_async(tokens.api_token_authenticate)(plain=token.strip(), scope=self.scope)
        finally:
            timing["auth"] = time.perf_counter() - started
        if found is None:
            return None
        wait = tokens.rate_limits.take(found.pk)  # on the event loop: the buckets have no lock
        if wait:
            raise RateLimited(wait)
        return found


READ = TokenAuth(ApiToken.Scope.SESSIONS_READ)
WRITE = TokenAuth(ApiToken.Scope.RESPONSES_WRITE)


class RestHook(NinjaAPI):
    """django-ninja's API, with HEAD beside every GET, and the error body on the answers it
    makes outside its exception handlers.

    HEAD (RFC 9110 §9.3.2): each GET operation takes HEAD too, so HEAD is authenticated,
    rate limited and answered by the same view, whose answer then goes without its body
    (`rest_view`). It is left out of the OpenAPI document, where it would repeat each GET
    under the same operation id.

    Errors: a method that a path does not take is answered by the path's own view with an
    empty `HttpResponseNotAllowed`, and the API's root raises Django's `Http404` (an HTML
    page). Every view of the API is wrapped here (`rest_view`) to answer those with the error
    body (the 405 keeps its `Allow` header).
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._schemas: dict[str, dict] = {}

    def get(self, path: str, **options: Any) -> Callable:
        return self.api_operation(["GET", "HEAD"], path, **options)

    def get_openapi_schema(self, **options: Any) -> dict:
        """The OpenAPI document, built once a process for each set of options (ninja builds
        it anew for every request, which takes a fifth of a second of CPU; the API does not
        change while the process runs). Callers must not change it."""
        key = repr(sorted(options.items()))
        if key not in self._schemas:
            schema = super().get_openapi_schema(**options)
            for operations in schema["paths"].values():
                operations.pop("head", None)
            self._schemas[key] = schema
        return self._schemas[key]

    @property
    def urls(self):
        patterns, app_name, namespace = super().urls
        for pattern in patterns:
            pattern.callback = rest_view(pattern.callback)
        return patterns, app_name, namespace


def _not_allowed(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    if not isinstance(response, HttpResponseNotAllowed):
        return response
    allowed = ", ".join(sorted(response["Allow"].split(", ")))
    error = error_response(
        405,
        "method_not_allowed",
        f"{request.method} is not allowed here; allowed: {allowed}.",
        request=request,
    )
    error["Allow"] = allowed
    return error


async def _no_body() -> AsyncIterator[bytes]:
    return
    yield  # an async generator (an ASGI server reads it without a thread) that ends at once


def _finished(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """A view's answer as the REST hook sends it: a 405 with the error body; to a HEAD, the
    status and headers of the GET without its body. A streamed body is not read at all (an
    event stream's would never end); files behind it are closed with the response."""
    response = _not_allowed(request, response)
    if request.method != "HEAD":
        return response
    if response.streaming:
        response.streaming_content = _no_body()
    else:
        response["Content-Length"] = str(len(response.content))  # as the GET's (RFC 9110 §8.6)
        response.content = b""
    return response


def _no_such_endpoint() -> HttpResponse:
    return error_response(
        404, "not_found", "No such endpoint; the endpoints are listed in /api/v1/openapi.json."
    )


def rest_view(view: Callable) -> Callable:
    """`view` answering as the REST hook does (`_finished`): every view of /api/v1/, and
    /metrics."""
    if asyncio.iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            return _finished(request, await view(request, *args, **kwargs))

        return async_view

    @functools.wraps(view)
    def sync_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return _finished(request, view(request, *args, **kwargs))
        except Http404:
            return _finished(request, _no_such_endpoint())

    return sync_view


def _docs_view(view: Callable) -> Callable:
    """The OpenAPI document and the docs page: GET and HEAD only, another method answered as
    on every path with the REST hook's 405 (`rest_view`), not CSRF's HTML 403 (ninja's docs
    views are not exempt; they read no cookie and change nothing)."""
    return csrf_exempt(require_safe(view))


api = RestHook(
    title="Operator Console REST hook",
    version="1",
    description=(
        "Steer live Realtime sessions: ask for the next response with per-response "
        "instructions and metadata, add notes, interrupt, and read the response history."
    ),
    urls_namespace="api_v1",
    docs_url="/docs",
    # Deep links put a link inside each operation's toggle button (axe: nested-interactive).
    docs=Swagger(settings={"deepLinking": False}),
    docs_decorator=_docs_view,
    openapi_url="/openapi.json",
    parser=JsonParser(),
    renderer=JsonRenderer(),
)


# ---------------------------------------------------------------------------- errors


def error_response(
    status: int,
    code: str,
    message: str,
    fields: dict[str, str] | None = None,
    *,
    request: HttpRequest | None = None,
) -> JsonResponse:
    """The error body of every refusal, logged as a structured `api.refused` event (path,
    status, code, the token's name when known; never the token itself)."""
    if request is not None:
        auth = getattr(request, "auth", None)
        events_log.info(
            json.dumps(
                {
                    "event": "api.refused",
                    "method": request.method,
                    "path": request.path,
                    "status": status,
                    "code": code,
                    "token": getattr(auth, "name", None),
                }
            )
        )
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return JsonResponse({"error": error}, status=status)


def _errors(*statuses: int) -> dict[int, type[ErrorOut]]:
    """Documented error answers; every endpoint takes a token, so each may be rate limited."""
    return {status: ErrorOut for status in sorted({*statuses, 429})}


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    fields: dict[str, str] = {}
    for error in exc.errors:
        where, *path = error.get("loc") or ("body",)
        if where == "body" and path and path[0] == "payload":
            path = path[1:]  # ninja names the body parameter; the client knows no such field
        name = ".".join(str(part) for part in path) or str(where)
        if where == "header":
            name = "Idempotency-Key" if name.lower() == "idempotency-key" else name
        # A validator's own words, without the "Value error, " pydantic puts before them.
        message = error.get("msg", "invalid").removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "Unknown field; the accepted fields are listed in /api/v1/openapi.json."
        fields.setdefault(name, message)
    summary = "; ".join(f"{name}: {message}" for name, message in fields.items())
    return error_response(422, "invalid_fields", f"Invalid fields — {summary}", fields, request=request)


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if isinstance(exc.__cause__, BodyTooLarge):
        return _too_large(request, exc)
    if exc.status_code == 400 and exc.__cause__ is not None:
        return error_response(
            400, "invalid_json", f"The body is not valid JSON: {exc.__cause__}.", request=request
        )
    return error_response(exc.status_code, "http_error", str(exc), request=request)


def _no_body_over_the_limit(request: HttpRequest) -> None:
    """In a view that reads no body (the parser checks the others): one over MAX_BODY_BYTES
    is refused all the same, with the 413 of every path, after the token check as there."""
    if len(request.body) > MAX_BODY_BYTES:  # over Django's own limit, it raises itself
        raise RequestDataTooBig(f"over {MAX_BODY_BYTES} bytes")


@api.exception_handler(RequestDataTooBig)  # over Django's own limit, far above ours
def _too_large(request: HttpRequest, exc: Exception) -> HttpResponse:
    return error_response(
        413, "body_too_large", f"The body is over the limit of {MAX_BODY_BYTES} bytes (64 KiB).", request=request
    )


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: Exception) -> HttpResponse:
    response = error_response(
        401, "unauthenticated", "Send a valid API token as 'Authorization: Bearer <token>'.", request=request
    )
    response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


@api.exception_handler(tokens.MissingScope)
def _forbidden(request: HttpRequest, exc: tokens.MissingScope) -> HttpResponse:
    return error_response(403, "missing_scope", f"This token lacks the scope '{exc.scope}'.", request=request)


@api.exception_handler(RateLimited)
def _rate_limited(request: HttpRequest, exc: RateLimited) -> HttpResponse:
    response = error_response(
        429,
        "rate_limited",
        tokens.rate_limit_message(exc.retry_after),
        request=request,
    )
    response["Retry-After"] = tokens.retry_after(exc.retry_after)
    return response


@api.exception_handler(services.ServiceError)
def _refused(request: HttpRequest, exc: services.ServiceError) -> HttpResponse:
    field = getattr(exc, "field", None)
    fields = {field: exc.message} if field else None
    response = error_response(exc.status, exc.code, exc.message, fields, request=request)
    if exc.status in (429, 503):
        response["Retry-After"] = "1"
    return response


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Exception) -> HttpResponse:
    return error_response(404, "not_found", "Not found.", request=request)


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def _database_unavailable(request: HttpRequest, exc: Exception) -> HttpResponse:
    """The database did not answer (restarting, failing over, out of connections): not the
    client's fault nor a bug of ours, and worth trying again shortly."""
    log.warning("%s %s: the database is unavailable: %s", request.method, request.path, exc)
    response = error_response(
        503,
        "database_unavailable",
        "The database is unavailable; try again in a moment.",
        request=request,
    )
    response["Retry-After"] = "1"
    return response


@api.exception_handler(Exception)
def _failed(request: HttpRequest, exc: Exception) -> HttpResponse:
    """Anything else is our fault: logged with its traceback, answered 500 with the error body."""
    log.error("%s %s failed", request.method, request.path, exc_info=exc)
    return error_response(
        500, "internal_error", "The server failed to answer this request; the failure is logged.", request=request
    )


# ---------------------------------------------------------------------------- timing


def _timing(request: HttpRequest) -> dict[str, float]:
    timing = getattr(request, "_oc_timing", None)
    if timing is None:
        timing = request._oc_timing = {"start": time.monotonic()}  # type: ignore[attr-defined]
    return timing


def _server_timing(timing: dict[str, float]) -> str:
    """`Server-Timing` of the phases in this process (milliseconds); in DEBUG also the
    monotonic clock at the view's start, so a benchmark on this machine can place them."""
    parts = [f"{name};dur={seconds * 1000:.3f}" for name, seconds in timing.items() if name != "start"]
    if settings.DEBUG:
        parts.append(f'start;desc="{timing["start"]:.6f}"')
    return ", ".join(parts)


# ---------------------------------------------------------------------------- sessions


def _unknown_or_repeated(
    request: HttpRequest, accepted: frozenset[str], skip: str = ""
) -> dict[str, str]:
    """The query's parameters that a listing does not take (a misspelt filter would otherwise
    select, and export, every row) or that are given twice (which of the two would apply?),
    each with what is wrong; those beginning with `skip` are the caller's to check."""
    problems: dict[str, str] = {}
    for param in request.GET:
        if skip and param.startswith(skip):
            continue
        if param not in accepted:
            problems[param] = (
                "Unknown parameter; the accepted parameters are listed in /api/v1/openapi.json."
            )
        elif (given := len(request.GET.getlist(param))) > 1:
            problems[param] = f"given {given} times; give it once"
    return problems


def _refuse_query(request: HttpRequest, problems: dict[str, str]):
    """The 422 that names each bad parameter of the query."""
    summary = "; ".join(f"{name}: {message}" for name, message in problems.items())
    return error_response(
        422, "invalid_fields", f"Invalid fields — {summary}", problems, request=request
    )


# The parameters of GET /sessions: a misspelt `status` would otherwise list every session.
SESSION_LIST_PARAMS = frozenset(("status", "limit"))


@api.get(
    "/sessions",
    response={200: SessionList, **_errors(401, 403, 422)},
    auth=READ,
    summary="List sessions",
    description="Newest first. A parameter not listed here, or one given twice, is a 422.",
    tags=["sessions"],
)
async def list_sessions(
    request: HttpRequest,
    status: SessionStatus | None = None,
    limit: int = Query(100, ge=1, le=1000, description="At most this many, newest first."),
):
    if problems := _unknown_or_repeated(request, SESSION_LIST_PARAMS):
        return _refuse_query(request, problems)
    sessions = await db_async(selectors.session_list)(status=status, limit=limit)
    return {"items": [session.to_dict() for session in sessions]}


@api.get(
    "/sessions/{session_id}",
    response={200: SessionOut, **_errors(401, 403, 404)},
    auth=READ,
    summary="Get a session",
    tags=["sessions"],
)
async def get_session(request: HttpRequest, session_id: str):
    session = await db_async(selectors.session_get)(session_id=session_id)
    if session is None:
        raise services.SessionNotFound(f"No session with id '{session_id}'.")
    return session.to_dict()


@api.patch(
    "/sessions/{session_id}",
    response={200: SessionOut, **_errors(400, 401, 403, 404, 413, 422)},
    auth=WRITE,
    summary="Label a session",
    description="Sets the operators' label (at most 200 characters; empty clears it), live or over.",
    tags=["sessions"],
)
async def label_session(request: HttpRequest, session_id: str, payload: LabelIn):
    session = await services.live_session_label_set(
        session_id=session_id, label=payload.label or "", by=f"token:{request.auth.name}"
    )
    return session.to_dict()


@api.get(
    "/sessions/{session_id}/recording",
    response={200: None, **_errors(401, 403, 404)},
    auth=READ,
    summary="Download a session's recording",
    description=(
        "The call as a stereo WAV (channel 0 the caller, 1 the agent; 24 kHz, 16-bit, one "
        "timeline), when OC_RECORD_AUDIO was on. 404 when there is none: not a voice "
        "session, recording off, or deleted after OC_RECORDING_RETENTION_DAYS. Byte ranges "
        "are honoured (206)."
    ),
    openapi_extra={"responses": {200: {"description": "audio/wav", "content": {"audio/wav": {}}}}},
    tags=["sessions"],
)
async def get_recording(request: HttpRequest, session_id: str):
    session = await db_async(recordings.recorded_session)(session_id=session_id)
    if session is None:
        raise services.SessionNotFound(f"No recording of a session with id '{session_id}'.")
    return await db_async(recordings.recording_response)(request, session)


# ---------------------------------------------------------------------------- responses


@api.post(
    "/sessions/{session_id}/responses",
    response={200: RequestOut, 202: RequestOut, **_errors(400, 401, 403, 404, 409, 413, 422, 429)},
    auth=WRITE,
    summary="Request the next response",
    description=(
        "Stored, then queued behind the session's other requests (out-of-band ones, "
        "conversation 'none', are sent at once). 202 with the new request; 200 with the first "
        "one when the same Idempotency-Key and body were already used."
    ),
    tags=["responses"],
)
async def submit_response(
    request: HttpRequest,
    response: HttpResponse,
    session_id: str,
    payload: ResponseOverrides = Body(None),
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key", min_length=1, max_length=MAX_IDEMPOTENCY_KEY_CHARS
    ),
):
    token = request.auth
    timing = _timing(request)
    row, created = await services.response_request_submit(
        session_id=session_id,
        overrides=payload if payload is not None else ResponseOverrides(),
        origin="api",
        requested_by=f"token:{token.name}",
        idempotency_key=idempotency_key,
        idempotency_scope=f"token:{token.pk}",
        timing=timing,
    )
    response["Server-Timing"] = _server_timing(timing)
    return Status(202 if created else 200, row.to_dict())


@api.get(
    "/sessions/{session_id}/responses",
    response={200: RequestList, **_errors(401, 403, 404, 422)},
    auth=READ,
    summary="A session's response requests, oldest first",
    description="A parameter not listed here, or one given twice, is a 422.",
    tags=["responses"],
)
async def list_responses(
    request: HttpRequest,
    session_id: str,
    limit: int = Query(1000, ge=1, le=1000, description="At most this many, oldest first."),
):
    if problems := _unknown_or_repeated(request, frozenset({"limit"})):
        return _refuse_query(request, problems)

    def load():
        session = services.session_found(session_id)
        return selectors.request_list(session=session, limit=limit)

    rows = await db_async(load)()
    return {"items": [row.to_dict() for row in rows]}


QUERY_LIMIT = 1000  # most rows on one page of GET /responses
MAX_METADATA_FILTERS = 15  # as many pairs as a request's metadata may hold
_METADATA_PARAM = re.compile(r"^metadata\[(.+)\]$", re.DOTALL)
# The parameters of GET /responses besides `metadata[KEY]`: those of `query_responses`.
QUERY_PARAMS = frozenset(
    ("session_id", "origin", "status", "since", "until", "requested_by", "cursor", "limit", "format")
)


def _query_problems(request: HttpRequest, **named: str | None) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The `metadata[KEY]=VALUE` filters of the query string, and what is wrong with them or
    with the rest of the query: a NUL in a string filter (PostgreSQL refuses one in a query),
    a parameter the endpoint does not take (a misspelt filter would otherwise select, and
    export, every row), one given twice (which of the two would apply?)."""
    pairs: list[tuple[str, str]] = []
    problems: dict[str, str] = {}
    for name, value in named.items():
        if value is not None and "\x00" in value:
            problems[name] = "contains a NUL character"
    problems.update(_unknown_or_repeated(request, QUERY_PARAMS, skip="metadata"))
    for param in request.GET:
        values = request.GET.getlist(param)
        if not param.startswith("metadata"):
            continue
        match = _METADATA_PARAM.match(param)
        if match is None:
            problems[param] = "filter on metadata as metadata[KEY]=VALUE"
            continue
        if len(values) > 1:
            problems[param] = f"given {len(values)} times; a request's metadata holds one value for each key"
        for value in values:
            if "\x00" in param or "\x00" in value:
                problems[param] = "contains a NUL character"
            pairs.append((match.group(1), value))
    if len(pairs) > MAX_METADATA_FILTERS:
        problems["metadata"] = f"at most {MAX_METADATA_FILTERS} metadata filters"
    return pairs, problems


JSON_TYPE = "application/json; charset=utf-8"
CSV_TYPE = "text/csv; charset=utf-8"


def _wants_csv(request: HttpRequest, format: str | None) -> bool:
    """`format` if given, else the first range of `Accept` that JSON or CSV fits, in Django's
    order (by q-value, then how specific the range is, then the client's order). A range's own
    parameters (`text/csv; header=present`) do not keep CSV from fitting it, as they would in
    `get_preferred_type`. JSON when neither is acceptable."""
    if format is not None:
        return format == "csv"
    for accepted in request.accepted_types:
        for offered in (JSON_TYPE, CSV_TYPE):
            main, sub = offered.split(";")[0].split("/")
            if accepted.main_type in ("*", main) and accepted.sub_type in ("*", sub):
                return offered == CSV_TYPE
    return False


@api.get(
    "/responses",
    response={200: RequestPage, **_errors(401, 403, 422)},
    auth=READ,
    summary="Query and export the response history",
    description=(
        "Requests of every session, oldest first (by created_at, then id), filtered: every "
        "filter given must match. Besides the parameters below, `metadata[KEY]=VALUE` "
        "(repeatable; up to 15) keeps requests whose metadata has KEY set to VALUE. `since` is "
        "inclusive and `until` exclusive, ISO 8601 with an offset (write `+` as `%2B`, or use "
        "`Z`). Pages: pass `next_cursor` back as `cursor`, with the same filters, until it is "
        "null; a page never moves when rows are added. A parameter given twice, or one not "
        "listed here, is a 422. With `format=csv` or `Accept: text/csv` the answer is CSV of "
        "every matching row (from `cursor`, if given; `limit` does not apply), streamed: a "
        "header row of the ResponseRequest field names, `metadata`, `usage` and `error` as "
        "JSON, times ISO 8601 with an offset, every other cell the value as the JSON has it."
    ),
    tags=["responses"],
    openapi_extra={
        "responses": {200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
        "parameters": [
            {
                "in": "query",
                "name": "metadata",
                "style": "deepObject",
                "explode": True,
                "required": False,
                "description": "metadata[KEY]=VALUE: requests whose metadata has KEY set to VALUE.",
                "schema": {"type": "object", "additionalProperties": {"type": "string"}, "maxProperties": 15},
            }
        ],
    },
)
async def query_responses(
    request: HttpRequest,
    response: HttpResponse,
    session_id: str | None = Query(None, description="A session's public id (sess_…)."),
    origin: Origin | None = None,
    status: RequestStatusValue | None = None,
    since: Moment | None = Query(
        None, description="Created at or after (ISO 8601 with an offset)."
    ),
    until: Moment | None = Query(None, description="Created before (ISO 8601 with an offset)."),
    requested_by: str | None = Query(None, description="An operator's username, or token:<name>."),
    cursor: str | None = Query(None, description="The next_cursor of the page before."),
    limit: int = Query(100, ge=1, le=QUERY_LIMIT, description=f"At most this many (1 to {QUERY_LIMIT})."),
    format: Literal["json", "csv"] | None = Query(None, description="csv: the same rows as CSV."),
):
    pairs, problems = _query_problems(request, session_id=session_id, requested_by=requested_by)
    if since is not None and until is not None and until < since:
        problems["until"] = "is before since; until (exclusive) must be at or after since (inclusive)"
    filters = selectors.RequestFilter(
        session_id=session_id,
        origin=origin,
        status=status,
        metadata=tuple(pairs),
        since=since,
        until=until,
        requested_by=requested_by,
    )
    after = None
    if cursor is not None and "cursor" not in problems:
        try:
            after = export.cursor_decode(cursor, filters)
        except export.BadCursor as exc:
            problems["cursor"] = str(exc)
    if problems:
        return _refuse_query(request, problems)
    if _wants_csv(request, format):
        chunks = export.csv_chunks(filters, after=after, flow=flow_of(request))
        answer = StreamingHttpResponse(chunks, content_type=CSV_TYPE)
        answer["Content-Disposition"] = f'attachment; filename="{export.csv_filename()}"'
        if format is None:
            patch_vary_headers(answer, ["Accept"])
        return answer
    if format is None:  # the same URL is JSON or CSV by the Accept header: caches must know
        patch_vary_headers(response, ["Accept"])
    rows, more = await db_async(selectors.request_page)(filters=filters, after=after, limit=limit)
    if not rows and more is not None:  # the page's rows are too recent to pass: let them settle
        await asyncio.sleep(selectors.SETTLE.total_seconds())
        rows, more = await db_async(selectors.request_page)(
            filters=filters, after=after, limit=limit
        )
    return {
        "items": [row.to_dict() for row in rows],
        "next_cursor": export.cursor_encode(more, filters) if more is not None else None,
    }


@api.get(
    "/responses/{request_id}",
    response={200: RequestOut, **_errors(401, 403, 404)},
    auth=READ,
    summary="Get a response request",
    tags=["responses"],
)
async def get_response(request: HttpRequest, request_id: str):
    row = await db_async(selectors.request_get)(request_id=request_id)
    if row is None:
        raise services.RequestNotFound(f"No response request with id '{request_id}'.")
    return row.to_dict()


@api.delete(
    "/responses/{request_id}",
    response={200: RequestOut, **_errors(401, 403, 404, 409, 503)},
    auth=WRITE,
    summary="Cancel a queued request",
    description="Only a request still queued can be cancelled (409 otherwise); it is then never sent.",
    tags=["responses"],
)
async def cancel_response(request: HttpRequest, request_id: str):
    row = await services.response_request_cancel(request_id=request_id)
    return row.to_dict()


# ---------------------------------------------------------------------------- notes, interrupt


@api.post(
    "/sessions/{session_id}/notes",
    response={201: NoteOut, **_errors(400, 401, 403, 404, 409, 413, 422, 503)},
    auth=WRITE,
    summary="Add a note to the conversation",
    description="Adds a message item without asking for a response: quiet context for the next turn.",
    tags=["sessions"],
)
async def add_note(request: HttpRequest, session_id: str, payload: NoteIn):
    note = await services.note_add(
        session_id=session_id, text=payload.text, role=payload.role, requested_by=f"token:{request.auth.name}"
    )
    return Status(201, NoteOut(**vars(note)))


@api.post(
    "/sessions/{session_id}/interrupt",
    response={202: InterruptOut, **_errors(401, 403, 404, 409, 413, 503)},
    auth=WRITE,
    summary="Interrupt the active response",
    description="Asks the upstream to cancel the in-conversation response in progress, if any.",
    tags=["sessions"],
)
async def interrupt(request: HttpRequest, session_id: str):
    _no_body_over_the_limit(request)
    response_id = await services.session_interrupt(session_id=session_id)
    return Status(202, InterruptOut(session_id=session_id, response_id=response_id))


# ---------------------------------------------------------------------------- call control


def _call_action_out(session_id: str, action) -> CallActionOut:
    return CallActionOut(
        session_id=session_id,
        action=action.action,
        target_uri=action.target_uri or None,
        requested_by=action.requested_by,
        ok=action.ok,
        created_at=action.created_at,
    )


@api.post(
    "/sessions/{session_id}/hangup",
    response={202: CallActionOut, **_errors(401, 403, 404, 409, 413, 502, 503)},
    auth=WRITE,
    summary="Hang up an attached call",
    description="Ends a WebRTC or phone call through the upstream's calls API; the session ends "
    "`hung_up`. 409 for a relayed session (no call) or one that has ended.",
    tags=["sessions"],
)
async def hangup(request: HttpRequest, session_id: str):
    _no_body_over_the_limit(request)
    action = await calls.call_hangup(session_id=session_id, requested_by=f"token:{request.auth.name}")
    return Status(202, _call_action_out(session_id, action))


@api.post(
    "/sessions/{session_id}/refer",
    response={202: CallActionOut, **_errors(400, 401, 403, 404, 409, 422, 502, 503)},
    auth=WRITE,
    summary="Transfer a phone call",
    description="Transfers a phone (SIP) call to `target_uri` (tel: or sip:) through the "
    "upstream's calls API. 409 for a relayed session (no call), a WebRTC call (the service "
    "transfers SIP calls only) or one that has ended.",
    tags=["sessions"],
)
async def refer(request: HttpRequest, session_id: str, payload: ReferIn):
    action = await calls.call_refer(
        session_id=session_id, target_uri=payload.target_uri, requested_by=f"token:{request.auth.name}"
    )
    return Status(202, _call_action_out(session_id, action))


# ---------------------------------------------------------------------------- tool approvals


@api.post(
    "/sessions/{session_id}/approvals/{approval_id}",
    response={200: ApprovalOut, **_errors(400, 401, 403, 404, 409, 413, 422, 503)},
    auth=WRITE,
    summary="Approve or deny a tool call",
    description=(
        "Decides an agent's pending request to run a tool (an MCP approval request). The first "
        "decision wins and is sent upstream; a request already decided (by an operator, the "
        "caller's app, or the timeout) is a 409 that names who decided."
    ),
    tags=["sessions"],
)
async def decide_approval(request: HttpRequest, session_id: str, approval_id: str, payload: DecisionIn):
    return await approvals.approval_decide(
        session_id=session_id,
        approval_id=approval_id,
        approve=payload.approve,
        reason=payload.reason or "",
        decided_by=f"token:{request.auth.name}",
        origin="api",
    )


@api.get(
    "/sessions/{session_id}/approvals",
    response={200: ApprovalList, **_errors(401, 403, 404)},
    auth=READ,
    summary="List a session's tool approval requests",
    description="Oldest first, as recorded: pending, approved, denied or expired, with who decided.",
    tags=["sessions"],
)
async def list_approvals(request: HttpRequest, session_id: str):
    return {"items": await db_async(approvals.approval_list)(session_id=session_id)}


# ---------------------------------------------------------------------------- events (Server-Sent Events)

# The streams' parameters. Any other is refused rather than ignored: `/events?session_id=…`
# or `?type=…` looks like a filter and would stream every session's every event; so is one
# given twice (from which of the two would the stream resume?).
EVENT_STREAM_PARAMS = frozenset(("last_event_id", "lastEventId"))


def _resume_query(request: HttpRequest, last_event_id: str | None) -> str | None:
    """The id to resume after, from the query. event-source-polyfill (how a page sends a token
    to a stream) resumes with `?lastEventId=` and no Last-Event-ID header, appended to the URL
    it was given; being the id of its last event, it wins over a `last_event_id` in that URL."""
    return request.GET.get("lastEventId") or last_event_id


_EVENTS_DOC = dict(
    auth=READ,
    tags=["events"],
    response={204: None, **_errors(400, 401, 403, 404, 422)},
    openapi_extra={
        "responses": {
            200: {"description": "text/event-stream", "content": {"text/event-stream": {}}}
        }
    },
)


@api.get(
    "/events",
    summary="Follow every session (Server-Sent Events)",
    description=(
        "Each event: `id:` and `data:` (JSON with `type`). `Last-Event-ID` (or `last_event_id`, "
        "or event-source-polyfill's `lastEventId`) resumes right after that id within the kept "
        "window (OC_EVENTS_RETENTION, ≥ 10 min); older: a `stream.gap` event first. Any other "
        "parameter, or one given twice, is a 422. A client that does not read is dropped. A token "
        "holds at most OC_MAX_STREAMS_PER_TOKEN streams open at once in a server process: "
        "one more is a 429 `too_many_streams`."
    ),
    **_EVENTS_DOC,
)
async def follow_events(
    request: HttpRequest,
    last_event_id: str | None = Query(None, description="For clients that cannot send Last-Event-ID."),
    last_event_id_header: str | None = Header(None, alias="Last-Event-ID"),
):
    if problems := _unknown_or_repeated(request, EVENT_STREAM_PARAMS):
        return _refuse_query(request, problems)
    query = _resume_query(request, last_event_id)
    after = event_stream.parse_last_event_id(last_event_id_header, query)
    return await event_stream.event_stream_response(request, session_id=None, last_event_id=after)


@api.get(
    "/sessions/{session_id}/events",
    summary="Follow one session (Server-Sent Events)",
    description=(
        "As /events, for one session; the stream ends after `session.ended`, and 204 answers "
        "when nothing more will come. An ended session whose events after Last-Event-ID are "
        "all gone (its end too) has a stream of the `stream.gap` event alone, with an id: "
        "resumed from that id, it answers 204."
    ),
    **_EVENTS_DOC,
)
async def follow_session_events(
    request: HttpRequest,
    session_id: str,
    last_event_id: str | None = Query(None, description="For clients that cannot send Last-Event-ID."),
    last_event_id_header: str | None = Header(None, alias="Last-Event-ID"),
):
    if problems := _unknown_or_repeated(request, EVENT_STREAM_PARAMS):
        return _refuse_query(request, problems)
    query = _resume_query(request, last_event_id)
    after = event_stream.parse_last_event_id(last_event_id_header, query)
    return await event_stream.event_stream_response(request, session_id=session_id, last_event_id=after)


# ---------------------------------------------------------------------------- anything else


class AnyPath:
    """Django's `path` converter, newlines included (its `.+` stops at one): the catch-all below
    takes every rest of a URL."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(AnyPath, "anypath")


@api.api_operation(
    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"], "/{anypath:rest}", auth=None, include_in_schema=False
)
async def not_found(request: HttpRequest, rest: str):
    """Last of the routes: an unknown URL under /api/v1/ is a 404 with the error body too, not
    Django's HTML page; so is an id with a '/' in it (sent as %2F, it splits the path), a
    newline anywhere in it too."""
    return _no_such_endpoint()


# ---------------------------------------------------------------------------- Django's own refusals


def _api_or_page(status: int, code: str, message: str, page: Callable[..., HttpResponse]):
    """A handler for an error Django answers itself (a Host outside DJANGO_ALLOWED_HOSTS, an
    unreadable request or one over DATA_UPLOAD_MAX_MEMORY_SIZE, a failure in middleware or
    in a view outside the REST hook): under /api/ it answers with the error body like every
    REST answer, under /v1/ (the OpenAI-compatible endpoints) in the service's error shape
    (`apps.calls.views.refusal`), elsewhere with Django's own page."""

    def handler(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
        if request.path.startswith("/api/"):
            return error_response(status, code, message)
        if request.path.startswith("/v1/"):
            return calls_views.refusal(request, status, exception)
        return page(request, exception) if status != 500 else page(request)

    return handler


handler400 = _api_or_page(400, "bad_request", "The request was refused as malformed or not for this host.", defaults.bad_request)
handler403 = _api_or_page(403, "forbidden", "The request was refused.", defaults.permission_denied)
handler404 = _api_or_page(404, "not_found", "No such endpoint; the endpoints are listed in /api/v1/openapi.json.", defaults.page_not_found)
handler500 = _api_or_page(500, "server_error", "The server failed; the failure is logged.", defaults.server_error)
