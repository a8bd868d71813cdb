"""Reading and validating a request body: size cap first, then JSON (or the multipart form the
OpenAI SDK sends), then the pydantic model. Every failure becomes a 400 (or 413) naming the
offending field."""

import asyncio
import re
from collections.abc import AsyncGenerator

import pydantic_core
from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from serve_app.api.errors import InvalidRequest, PayloadTooLarge
from serve_app.api.openai_form import REPEATABLE, UploadedImage, map_form
from serve_app.api.protocol import VideoRequest
from serve_app.error_codes import ErrorCode
from serve_app.limits import MAX_NAME_CHARS

# Fields a body may have, JSON or form: far more than VideoRequest's, far fewer than a flood of
# unknown ones (pydantic builds an error for each: 25 MiB of them took 20 s and 2.4 GB).
MAX_FIELDS = 64


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `max_bytes`."""
    declared = content_length(request.headers.get("content-length"))
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(f"The request body is over the {max_bytes} byte limit.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"The request body is over the {max_bytes} byte limit.")
    return bytes(body)


def content_length(header: str | None) -> int | None:
    """A Content-Length header's value; None when absent or not a plain number (then the bytes
    themselves are counted)."""
    if header and header.isascii() and header.isdecimal() and len(header) <= 19:
        return int(header)
    return None


async def parse_video_request(body: bytes) -> VideoRequest:
    """Validate a JSON body as a VideoRequest, or raise InvalidRequest for its first problem; on a
    worker thread (a body of megabytes takes a while to parse)."""
    if not body.strip():
        raise InvalidRequest("The request body is empty: send a JSON object with at least `prompt`.")
    return await asyncio.to_thread(_validate_json, body)


def _validate_json(body: bytes) -> VideoRequest:
    try:
        data = pydantic_core.from_json(body)
    except ValueError:
        data = None  # malformed: pydantic says where, below
    if isinstance(data, dict) and len(data) > MAX_FIELDS:
        raise InvalidRequest(f"The body has {len(data)} fields, over the limit of {MAX_FIELDS}.")
    try:
        return VideoRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _as_invalid_request(exc) from None


async def parse_form_video_request(headers: Headers, body: bytes) -> tuple[VideoRequest, dict[str, str]]:
    """Validate a multipart body as a VideoRequest; also what its OpenAI-style fields asked for."""
    try:
        form = await MultiPartParser(
            headers, _once(body), max_files=1, max_fields=MAX_FIELDS, max_part_size=len(body)
        ).parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"Malformed multipart body: {exc.message}") from None
    fields: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    upload = None
    for name, value in form.multi_items():
        if not _FIELD_NAME.fullmatch(name):
            raise InvalidRequest(f"Form field names are letters, digits, _ and [ ], {MAX_NAME_CHARS} at most.")
        if name in REPEATABLE and isinstance(value, str):
            repeated.setdefault(name, []).append(value)
            continue
        if name in fields or (upload is not None and name == "input_reference"):
            raise InvalidRequest(f"{name}: given more than once", param=name)
        if isinstance(value, UploadFile):
            if name != "input_reference":
                raise InvalidRequest(f"{name}: only input_reference may be a file", param=name)
            upload = UploadedImage(value.filename or "upload", await value.read())
        else:
            fields[name] = value
    data, requested = map_form(fields, upload, repeated)
    try:
        # Form values are all text: "30" is read as 30 here, unlike in JSON.
        return VideoRequest.model_validate(data, strict=False), requested
    except ValidationError as exc:
        raise _as_invalid_request(exc) from None


_FIELD_NAME = re.compile(rf"[A-Za-z0-9_\[\]]{{1,{MAX_NAME_CHARS}}}")


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


def _as_invalid_request(exc: ValidationError) -> InvalidRequest:
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return InvalidRequest(f"Malformed JSON: {first['ctx']['error']}.", code=ErrorCode.INVALID_JSON)
    # An unknown field's name is the caller's: echoed no longer than a name may be. A nested one
    # as `loras[0].scale`.
    param = (
        "".join(
            f"[{part}]" if isinstance(part, int) else f"{'.' if index else ''}{str(part)[:MAX_NAME_CHARS]}"
            for index, part in enumerate(first["loc"])
        )
        or None
    )
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "model_type":
        message = "the body must be a JSON object"
    text = f"{param}: {message}" if param else message
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return InvalidRequest(text, param=param)
