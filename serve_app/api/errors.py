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
from serve_app.error_codes import ErrorCode
from serve_app.messages import Refusal

logger = logging.getLogger(__name__)

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


class ServiceError(Exception):
    """An error with a code (which gives its HTTP status) and a message meant for the client."""

    code = ErrorCode.INTERNAL_ERROR

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: ErrorCode | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        if code is not None:
            self.code = code

    @property
    def status_code(self) -> int:
        return self.code.http_status


class InvalidRequest(ServiceError):
    code = ErrorCode.INVALID_REQUEST


class Unauthorized(ServiceError):
    code = ErrorCode.UNAUTHORIZED

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ServiceError):
    code = ErrorCode.NOT_FOUND


class PayloadTooLarge(ServiceError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class UnsupportedMediaType(ServiceError):
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class Refused(ServiceError):
    """The jobs deployment refused a submission (it does not fit, the queue or the key's share is
    full, an idempotency conflict)."""

    def __init__(self, refusal: Refusal) -> None:
        headers = {"Retry-After": str(refusal.retry_after_s)} if refusal.retry_after_s is not None else None
        super().__init__(refusal.message, code=refusal.code, param=refusal.param, headers=headers)


class TooManyRequests(ServiceError):
    def __init__(self, message: str, *, code: ErrorCode, retry_after_s: int) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class RangeNotSatisfiable(ServiceError):
    code = ErrorCode.RANGE_NOT_SATISFIABLE

    def __init__(self, size: int) -> None:
        super().__init__(f"The Range is outside the file's {size} bytes.", headers={"Content-Range": f"bytes */{size}"})


def error_body(
    code: ErrorCode, message: str, param: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """The API's error shape (`ErrorResponse`) as JSON: `param` always, `request_id` when there is one."""
    detail = ErrorDetail(code=code, message=message, param=param, request_id=request_id)
    return ErrorResponse(error=detail).model_dump(exclude={"error": {"request_id"}} if request_id is None else None)


def error_response(
    code: ErrorCode,
    message: str,
    param: str | None = None,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
    status: int | None = None,
) -> JSONResponse:
    """The error as a response: the code's HTTP status, unless Starlette chose another."""
    return JSONResponse(
        error_body(code, message, param, request_id), status_code=status or code.http_status, headers=headers
    )


def request_id_of(request: Request) -> str:
    """The id that ties a response to its log lines (set by the ingress middleware)."""
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    request_id = request_id_of(request) if exc.status_code >= 500 else None
    return error_response(exc.code, exc.message, exc.param, request_id, exc.headers)


async def _outbound_refused(request: Request, exc: OutboundRefused) -> JSONResponse:
    return error_response(ErrorCode.INVALID_REQUEST, exc.message, exc.param)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own 422 (query or path parameters) becomes our 400 with the field in `param`.
    first = exc.errors()[0]
    param = str(first["loc"][-1]) if first.get("loc") else None
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return error_response(ErrorCode.INVALID_REQUEST, message, param)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Starlette's routing errors; any other keeps Starlette's status.
    code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(exc.status_code, ErrorCode.HTTP_ERROR)
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return error_response(code, str(exc.detail), headers=headers, status=exc.status_code)


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
    return error_response(
        ErrorCode.INTERNAL_ERROR, f"Internal server error (request id {request_id}).", None, request_id
    )


def install_error_handlers(app: FastAPI) -> None:
    """Render every error, expected or not, in the API's JSON error shape."""
    # The decorator form: add_exception_handler is typed for handlers of any Exception, not a subclass.
    app.exception_handler(ServiceError)(_service_error)
    app.exception_handler(OutboundRefused)(_outbound_refused)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(Exception)(_unexpected_error)
