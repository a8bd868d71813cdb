"""Serving stored files: streamed from storage in chunks, with single-range `Range` requests so
that a browser can seek in a video. A chunk is read only once the one before has been sent (the
ASGI server waits for the client), so a slow reader slows the reads instead of filling memory."""

import asyncio
import re
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from serve_app.api.errors import NotFound, RangeNotSatisfiable
from serve_app.common.storage import ResultStorage

# Up to 19 digits: more than any file has bytes (and than int() is asked to read).
_RANGE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})")
_CHUNK = 256 << 10


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a `Range` header asks for; None for the whole file."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None:  # absent, several ranges or another unit: the whole file is a valid answer
        return None
    first, last = match.groups()
    if (not first and not last) or size == 0:
        return None
    if not first:  # the last N bytes
        if int(last) == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - int(last)), size - 1
    start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(size)
    return start, end


async def file_response(
    storage: ResultStorage, job_id: str, name: str, media_type: str, range_header: str | None
) -> StreamingResponse:
    try:
        size = await asyncio.to_thread(storage.size, job_id, name)
    except FileNotFoundError:
        raise NotFound("The job's files are gone (expired or deleted).") from None
    byte_range = parse_range(range_header, size)
    start, end = byte_range or (0, size - 1)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Length": str(end - start + 1),
        "Content-Disposition": f'inline; filename="{job_id}.{name.rsplit(".", 1)[-1]}"',
        "Cache-Control": "private, max-age=3600",
    }
    if byte_range is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(
        _read(storage, job_id, name, start, end),
        status_code=206 if byte_range is not None else 200,
        media_type=media_type,
        headers=headers,
    )


async def _read(storage: ResultStorage, job_id: str, name: str, start: int, end: int) -> AsyncIterator[bytes]:
    file = await asyncio.to_thread(storage.open, job_id, name)
    try:
        await asyncio.to_thread(file.seek, start)
        remaining = end - start + 1
        while remaining > 0:
            chunk = await asyncio.to_thread(file.read, min(_CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
    finally:
        await asyncio.to_thread(file.close)
