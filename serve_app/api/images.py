"""The reference image of a text+image-to-video request: decoded from base64 or fetched from a
URL that must be public (or allow-listed), then resized to cover the video and centre-cropped."""

import asyncio
import base64
import binascii
import io
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from serve_app.api.errors import InvalidRequest, PayloadTooLarge
from serve_app.api.parsing import content_length
from serve_app.api.protocol import VideoRequest
from serve_app.common.outbound import OutboundPolicy, checked_get

logger = logging.getLogger(__name__)

_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.IGNORECASE)
_FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]
_MAX_REDIRECTS = 3
# Images decoded at once on an Ingress replica; the rest wait their turn. A decode of an image at
# the pixel cap takes about a second of CPU and hundreds of MB: never one per submission in flight.
DECODE_THREADS = 2
_DECODERS = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="wan-image")
UNREACHABLE = "image_url could not be downloaded (an HTTP 200 answer, in time, at most 3 redirects)."


class _Unreachable(Exception):
    """No image came back (the reason, for the log)."""


@dataclass(frozen=True)
class ImagePolicy:
    """Limits on reference images, from the app arguments."""

    max_bytes: int
    max_pixels: int
    fetch_timeout_s: float


def decode_base64(data: str, max_bytes: int, param: str = "image_base64") -> bytes:
    """The bytes of `image_base64`: raw base64 or a data URL."""
    payload = _DATA_URL.sub("", data.strip(), count=1)
    payload = "".join(payload.split())
    if len(payload) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"{param} is over the {max_bytes} byte limit.", param=param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{param} is not valid base64.", param=param) from None


def prepare_image(data: bytes, width: int, height: int, policy: ImagePolicy, param: str) -> bytes:
    """Decode, check and crop an image to exactly `width` x `height`; PNG bytes of the result.

    Pillow would stretch an image of another aspect ratio; we cover and centre-crop instead.
    CPU work: call it from a worker thread (`ImageLoader` uses its bounded pool).
    """
    try:
        with Image.open(io.BytesIO(data), formats=_FORMATS) as image:
            # Header-only so far: refuse a decompression bomb before decoding any pixel.
            if image.width * image.height > policy.max_pixels:
                raise PayloadTooLarge(
                    f"The image is {image.width}x{image.height}, over the {policy.max_pixels} pixel limit.",
                    param=param,
                )
            # The file's structure (a PNG's chunks and their checksums, to its end) without decoding
            # a pixel: a truncated image was refused only after seconds of decoding.
            image.verify()
        with Image.open(io.BytesIO(data), formats=_FORMATS) as image:
            image.draft("RGB", (width, height))  # a JPEG decodes at the smallest scale that covers the video
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise InvalidRequest(
            "The image could not be decoded (PNG, JPEG, WebP, GIF, BMP or TIFF expected).", param=param
        ) from None
    fitted = ImageOps.fit(rgb, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    out = io.BytesIO()
    fitted.save(out, format="PNG")
    return out.getvalue()


class ImageLoader:
    """Gets a request's reference image; `image_url` is downloaded through `OutboundPolicy`'s
    checks, at every redirect."""

    def __init__(self, policy: ImagePolicy, outbound: OutboundPolicy) -> None:
        self._policy = policy
        self._outbound = outbound

    async def load(self, request: VideoRequest, base64_param: str = "image_base64") -> bytes | None:
        """The request's image as PNG bytes of exactly its width x height, or None for t2v.

        `base64_param` names `image_base64` in errors, for a field that the client sent otherwise
        (an uploaded `input_reference`)."""
        if request.image_base64 is not None:
            data, param = decode_base64(request.image_base64, self._policy.max_bytes, base64_param), base64_param
        elif request.image_url is not None:
            data, param = await self.fetch(request.image_url), "image_url"
        else:
            return None
        return await asyncio.get_running_loop().run_in_executor(
            _DECODERS, prepare_image, data, request.width, request.height, self._policy, param
        )

    async def fetch(self, url: str) -> bytes:
        # One message whatever went wrong (refused connection, timeout, an HTTP status, redirects):
        # it must not tell a caller whether a port is open. The log says which.
        try:
            async with asyncio.timeout(self._policy.fetch_timeout_s):
                return await self._follow(url)
        except (TimeoutError, httpx.HTTPError, _Unreachable) as exc:
            logger.info("image_url not downloaded: %r", exc)
            raise InvalidRequest(UNREACHABLE, param="image_url") from None

    async def _follow(self, url: str) -> bytes:
        # `identity`: httpx would inflate a compressed answer a whole chunk at a time, before the
        # byte cap is checked (a few KB of `gzip, gzip` inflate to gigabytes).
        headers = {"Accept": "image/*", "Accept-Encoding": "identity"}
        async with checked_get(self._outbound, url, "image_url", headers, _MAX_REDIRECTS) as response:
            if response.status_code != 200:
                raise _Unreachable(f"HTTP {response.status_code}")
            return await self._read_capped(response)

    async def _read_capped(self, response: httpx.Response) -> bytes:
        limit = self._policy.max_bytes
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise InvalidRequest(
                "image_url answered with a Content-Encoding; only uncompressed (identity) answers are accepted.",
                param="image_url",
            )
        declared = content_length(response.headers.get("content-length"))
        if declared is not None and declared > limit:
            raise PayloadTooLarge(f"The image at image_url is over the {limit} byte limit.", param="image_url")
        body = bytearray()
        async for chunk in response.aiter_raw():  # the bytes as sent, never inflated
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(f"The image at image_url is over the {limit} byte limit.", param="image_url")
        return bytes(body)
