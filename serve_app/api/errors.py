"""The service's exceptions and the one place that renders them as the API's error shape."""

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from serve_app.api.protocol import ErrorDetail, ErrorResponse
from serve_app.common.outbound import OutboundRefused
from serve_app.messages import Refusal

logger = logging.getLogger(__name__)

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


class ServiceError(Exception):
    """An error with an HTTP status and a message meant for the client."""

    status_code = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        if code is not None:
            self.code = code


class InvalidRequest(ServiceError):
    status_code = 400
    code = "invalid_request"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class Refused(ServiceError):
    """The jobs deployment refused a submission (it does not fit, the queue or the key's share is
    full, an idempotency conflict)."""

    def __init__(self, refusal: Refusal) -> None:
        headers = {"Retry-After": str(refusal.retry_after_s)} if refusal.retry_after_s is not None else None
        super().__init__(refusal.message, code=refusal.code, param=refusal.param, headers=headers)
        self.status_code = refusal.status


class TooManyRequests(ServiceError):
    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, code: str, retry_after_s: int) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class RangeNotSatisfiable(ServiceError):
    status_code = 416
    code = "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"The Range is outside the file's {size} bytes.", headers={"Content-Range": f"bytes */{size}"})


class GenerationFailed(ServiceError):
    status_code = 500
    code = "generation_failed"


def error_body(code: str, message: str, param: str | None = None, request_id: str | None = None) -> dict[str, Any]:
    """The API's error shape (`ErrorResponse`) as JSON: `param` always, `request_id` when there is one."""
    detail = ErrorDetail(code=code, message=message, param=param, request_id=request_id)
    return ErrorResponse(error=detail).model_dump(exclude={"error": {"request_id"}} if request_id is None else None)


def request_id_of(request: Request) -> str:
    """The id that ties a response to its log lines (set by the ingress middleware)."""
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    request_id = request_id_of(request)
    return JSONResponse(
        error_body(exc.code, exc.message, exc.param, request_id if exc.status_code >= 500 else None),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _outbound_refused(request: Request, exc: OutboundRefused) -> JSONResponse:
    return JSONResponse(error_body("invalid_request", exc.message, exc.param), status_code=400)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own 422 (query or path parameters) becomes our 400 with the field in `param`.
    first = exc.errors()[0]
    param = str(first["loc"][-1]) if first.get("loc") else None
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return JSONResponse(error_body("invalid_request", message, param), status_code=400)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette's 405 names only the first route's
    (`/v1/videos` has a GET route and a POST route)."""
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.routes)
    ]


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = request_id_of(request)
    logger.error("request %s failed", request_id, exc_info=exc)
    return JSONResponse(
        error_body("internal_error", f"Internal server error (request id {request_id}).", None, request_id),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Render every error, expected or not, in the API's JSON error shape."""
    # The decorator form: add_exception_handler is typed for handlers of any Exception, not a subclass.
    app.exception_handler(ServiceError)(_service_error)
    app.exception_handler(OutboundRefused)(_outbound_refused)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(Exception)(_unexpected_error)
