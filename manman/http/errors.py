"""The one table from domain errors to HTTP statuses, and the error JSON of docs/spec.md."""

from __future__ import annotations

import logging

import msgspec
from quart import Response

from manman import errors

# the most specific class listed for an error decides its status
STATUS: dict[type[errors.ManmanError], int] = {
    errors.BadRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.LengthRequired: 411,
    errors.TooLarge: 413,
    errors.Invalid: 422,
    errors.WorkerError: 502,
    errors.Busy: 503,
    errors.Unavailable: 503,
    errors.InsufficientStorage: 507,
}

# the codes of answers the HTTP layer gives by itself (werkzeug's exceptions)
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 410: "gone",
              411: "length_required", 413: "body_too_large",
              415: "unsupported_media_type", 422: "invalid", 429: "rate_limited",
              502: "worker_error", 503: "unavailable"}

log = logging.getLogger("manman.http")

_encode = msgspec.json.Encoder().encode


def status_of(e: errors.ManmanError) -> int:
    if isinstance(e, errors.Relayed):
        return e.status
    for cls in type(e).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_response(status: int, code: str, message: str) -> Response:
    """The error JSON of docs/spec.md: {"error": {"code", "message"}}."""
    try:
        body = _encode({"error": {"code": code, "message": message}})
    except msgspec.EncodeError:  # a message quoting text no UTF-8 can hold
        body = _encode({"error": {"code": code, "message": message.encode(
            "utf-8", "replace").decode()}})
    return Response(body, status=status, content_type="application/json")


def domain_error_response(e: errors.ManmanError) -> Response:
    status = status_of(e)
    if status == 500:  # an error no table row covers is a bug, answered like any other crash
        log.error("request failed: %s has no status in the table: %s", type(e).__name__, e)
        return error_response(500, "internal", "internal error (see the manman log)")
    resp = error_response(status, e.code, e.message)
    if e.retry_after is not None:
        resp.headers["Retry-After"] = str(e.retry_after)
    return resp
