"""One error type, one JSON error shape, and the middleware that guarantees both (no 500 leaks a trace)."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from .. import logs, metrics
from ..responses import error_json
from ..store import StoreUnavailable

log = logging.getLogger("flagmeter.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details or {}


def error_response(error: ApiError) -> web.Response:
    return error_json(error.status, error.code, error.message, error.headers, error.details)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    rid = incoming if REQUEST_ID.fullmatch(incoming) else os.urandom(8).hex()
    logs.request_id.set(rid)
    logs.tenant.set(None)
    try:
        response = await handler(request)
    except ApiError as error:
        response = error_response(error)
    except StoreUnavailable:
        response = error_response(
            ApiError(503, "unavailable", "database unavailable; retry later", {"Retry-After": "2"})
        )
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = _HTTP_CODES.get(error.status, "http_error")
        message = error.reason if error.status != 413 else "request body is larger than 1 MiB"
        response = error_response(ApiError(error.status, code, message))
        if error.status == 405:
            response.headers["Allow"] = error.headers.get("Allow", "")
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        response = error_response(ApiError(500, "internal_error", "internal error; see the server log"))
    response.headers["X-Request-ID"] = rid
    elapsed = time.perf_counter() - started
    route = _route(request)
    metrics.http_request_duration.labels(route, request.method, str(response.status)).observe(elapsed)
    if response.status >= 400 or request.app["settings"].access_log:
        level = logging.ERROR if response.status >= 500 else logging.INFO
        log.log(
            level,
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )
    return response


async def read_json(request: web.Request) -> object:
    """The request body as JSON: 413 over the size limit, 400 when it is not JSON."""
    if request.content_length is not None and request.content_length > request.app["max_body"]:
        raise ApiError(413, "payload_too_large", "request body is larger than 1 MiB")
    body = await request.read()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "request body is not valid JSON") from None
