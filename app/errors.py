"""Where domain errors become HTTP statuses, and every error body gets one shape
(`schemas.ErrorBody`): a one-line `detail`, and the `field` (and `line`) at fault.

An error's status comes from one table (`STATUS_BY_ERROR`) and its own `user_fault`; its field
from its own `field`. That holds for a `LeafError` raised while handling a request and for one
a worker recorded for a failed job (`leaf_service.jobs.JobFailure`); no message is read for
either.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any, get_args

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.schemas import ErrorBody, FieldError, JobKind
from leaf_engine.errors import LeafError
from leaf_service.jobs import JobFailure
from leaf_service.store import BadRows

log = logging.getLogger(__name__)
UNPARSED_BODY = "There was an error parsing the body"  # FastAPI's 400 detail


class ApiError(Exception):
    """An error a handler raises on purpose: status, message, and the field at fault."""

    def __init__(self, status: int, detail: str, *, field: str | None = None,
                 line: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.line = line
        self.headers = headers


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"no {what} with id '{ident}'")


def error_response(status: int, detail: str, *, field: str | None = None,
                   line: int | None = None, errors: list[FieldError] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(detail=detail, field=field, line=line, errors=errors)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


# An error's HTTP status, by the name of its class (looked up along its bases, so a subclass
# answers as its parent) or of the label a worker gives a failure that is no LeafError.
# Errors not listed are 422 when they are the user's fault (`LeafError.user_fault`).
STATUS_BY_ERROR: dict[str, int] = {
    "TooLarge": 413,  # an upload over a configured limit: the user's, but not a 422
    "ModelLoadError": 503,  # a configured model cannot be loaded: the server's, for now
    "OutOfMemory": 503,  # a worker ran out of memory (runtime's label): try again smaller
}
USER_FAULT_STATUS = 422
# Not the user's fault and not listed: in the request itself, what was asked cannot be done
# (422, as ever); in a job the request waited on, the worker upstream failed (502).
REQUEST_FAILED_STATUS = 422
JOB_FAILED_STATUS = 502
# What a failed job's error is prefixed with in a response, so that it reads on its own.
_JOB_FAILED_LEAD = {"ModelLoadError": "a model cannot be loaded: ",
                    "OutOfMemory": "the worker ran "}


def error_status(names: Iterable[str | None], user_fault: bool, *, otherwise: int) -> int:
    """The status for an error whose class (and base classes) have these `names`."""
    for name in names:
        if name in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[name]
    return USER_FAULT_STATUS if user_fault else otherwise


def leaf_status(err: LeafError) -> int:
    return error_status((cls.__name__ for cls in type(err).__mro__), err.user_fault,
                        otherwise=REQUEST_FAILED_STATUS)


def job_failed(failure: JobFailure, what: str) -> ApiError:
    """The answer to a request that waited for a job (doing `what`) that failed. The user's
    mistake is told in the error's own words, as when raised in the request; the server's
    says what failed first."""
    status = error_status((failure.error_type,), failure.user_fault,
                          otherwise=JOB_FAILED_STATUS)
    lead = "" if failure.user_fault else _JOB_FAILED_LEAD.get(failure.error_type or "",
                                                              f"{what} failed: ")
    return ApiError(status, lead + failure.text, field=failure.field)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in {"body", "query", "path"} else [
        str(p) for p in loc]
    # A discriminated union puts the tag (e.g. 'detect') before the field: drop it.
    if len(parts) > 1 and parts[0] in get_args(JobKind):
        parts = parts[1:]
    return ".".join(parts) or (str(loc[0]) if loc else "body")


def _field_of(error: dict[str, Any]) -> str:
    ctx = error.get("ctx") or {}
    if error.get("type") == "json_invalid":
        return "body"  # FastAPI puts the character offset where the field would be
    if error.get("type") in {"union_tag_invalid", "union_tag_not_found"}:
        # A missing or unknown job kind: the discriminator is the field at fault.
        return str(ctx.get("discriminator", "kind")).strip("'")
    if isinstance(ctx.get("field"), str):
        # A rule across fields (a model validator) names the one at fault in its context,
        # as `schemas.field_error` makes it; its location is the whole body.
        return ctx["field"]
    return _field_name(tuple(error.get("loc", ())))


def _message(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        return f"invalid JSON{f' ({reason})' if reason else ''}"
    ctx = error.get("ctx") or {}
    if error.get("type") == "union_tag_not_found":
        return "missing; give one of detect, distill, evaluate"
    if error.get("type") == "union_tag_invalid":
        return f"{ctx.get('tag')!r} is not one of {ctx.get('expected_tags', '')}"
    if error.get("type") == "value_error" and "error" in ctx:
        return str(ctx["error"])  # without pydantic's "Value error, " in front
    return str(error.get("msg", "invalid"))


def _is_json_type(content_type: str | None) -> bool:
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and
                                          kind.endswith("+json"))


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if not _is_json_type(request.headers.get("content-type")) and any(
            tuple(e.get("loc", ())) == ("body",) and isinstance(e.get("input"), bytes)
            for e in exc.errors()):
        # FastAPI hands a body it did not parse as JSON to the model as bytes.
        return error_response(415, "send the body as JSON, with 'Content-Type: "
                                   "application/json'", field="content-type")
    errors = [FieldError(field=_field_of(e), message=_message(e)) for e in exc.errors()]
    if not errors:
        return error_response(422, "invalid request")
    first = errors[0]
    return error_response(422, f"{first.field}: {first.message}", field=first.field,
                          errors=errors)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.detail, field=exc.field, line=exc.line,
                          headers=exc.headers)


async def _leaf_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LeafError)
    line = getattr(exc, "line", None)  # an InputError's, in an upload
    errors = None
    if isinstance(exc, BadRows):
        errors = [FieldError(field=p.field or "file", message=p.reason, line=p.line)
                  for p in exc.problems]
    return error_response(leaf_status(exc), str(exc), field=exc.field, line=line,
                          errors=errors)


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis unreachable: %s", exc)
    return error_response(503, "the job store (Redis) is unreachable; try again shortly",
                          headers={"Retry-After": "5"})


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and detail == UNPARSED_BODY:
        # FastAPI's answer to a body that json.loads gave up on in some other way than a
        # syntax error; it is malformed JSON all the same, and answered as such.
        reason = {RecursionError: "nested too deeply", UnicodeDecodeError: "not UTF-8"}.get(
            type(exc.__cause__), "cannot be parsed")
        return error_response(422, f"body: invalid JSON ({reason})", field="body")
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        # Starlette names only the first route on the path; one path has a route per method.
        headers["Allow"] = ", ".join(_allowed(request)) or headers.get("Allow", "")
    return error_response(exc.status_code, detail, headers=headers or None)


def _allowed(request: Request) -> list[str]:
    """The methods the OpenAPI schema lists for the request's path."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, request.url.path):
            methods |= {m.upper() for m in operations}
    return sorted(methods)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(LeafError, _leaf_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _redis_down)
    app.add_exception_handler(StarletteHTTPException, _http)


class BodyLimit:
    """Refuse request bodies over a size limit with 413, before they are read whole.

    Uploads get `upload_limit`, every other request `limit`. Bodies without a
    Content-Length are counted as they arrive.
    """

    def __init__(self, app: ASGIApp, *, limit: int, upload_limit: int,
                 upload_paths: tuple[str, ...]):
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit
        self.upload_paths = upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/")
        limit = self.upload_limit if path in self.upload_paths else self.limit
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                await error_response(400, "invalid Content-Length header")(scope, receive, send)
                return
            if declared > limit:
                await self._too_large(limit)(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise StarletteHTTPException(413, self._message(limit))
            return message

        await self.app(scope, counted, send)

    def _too_large(self, limit: int) -> JSONResponse:
        return error_response(413, self._message(limit), field="body")

    def _message(self, limit: int) -> str:
        setting = ("LEAF_MAX_UPLOAD_BYTES" if limit == self.upload_limit else
                   "LEAF_MAX_INSTRUCTION_CHARS and LEAF_MAX_OUTPUT_CHARS")
        return f"request body larger than {limit} bytes (set by {setting})"
