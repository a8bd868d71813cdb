"""What the OpenAI SDK's `videos.create` sends (multipart: `prompt`, `model`, `seconds`, `size`,
an `input_reference` file) mapped onto the fields of `VideoRequest`. Our own fields may come as
form fields too, `loras` as the SDK writes a list of objects (`extra_body={"loras": [...]}`): a
`loras[][path]` and `loras[][scale]` field an adapter, repeated in order. What was asked for before
mapping is kept, for the job's `details.requested`."""

import base64
import re
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

from serve_app.api.errors import InvalidRequest
from serve_app.api.protocol import VideoRequest
from serve_app.limits import (
    MAX_FPS,
    MAX_FRAMES,
    MAX_NAME_CHARS,
    MAX_SIDE,
    MIN_FRAMES,
    MIN_SIDE,
    MODEL_ID_PATTERN,
    SIZE_MULTIPLE,
)


@dataclass(frozen=True)
class UploadedImage:
    filename: str
    data: bytes


# The fields that a form may repeat: one of each an adapter, in order.
LORA_PATH, LORA_SCALE = "loras[][path]", "loras[][scale]"
REPEATABLE = (LORA_PATH, LORA_SCALE)

_SIZE = re.compile(r"(\d{1,5})[xX](\d{1,5})")
_MODEL = re.compile(MODEL_ID_PATTERN)
_SECONDS = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")


def map_form(
    fields: dict[str, str], upload: UploadedImage | None, repeated: dict[str, list[str]] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The VideoRequest fields of a form (`repeated`: those of REPEATABLE, each value in order),
    and what its OpenAI-style fields asked for, parsed and normalised (an uploaded
    `input_reference` by a safe form of its file name): only those are kept, in the job's
    `details.requested`."""
    data: dict[str, Any] = dict(fields)
    requested: dict[str, str] = {}
    if repeated:
        _not_both(LORA_PATH, data, "loras")
        paths, scales = repeated.get(LORA_PATH, []), repeated.get(LORA_SCALE, [])
        if scales and len(scales) != len(paths):
            raise InvalidRequest(f"loras: give a {LORA_SCALE} for each {LORA_PATH}, or none.", param="loras")
        adapters = zip_longest(paths, scales)
        data["loras"] = [{"path": path, **({"scale": scale} if scale else {})} for path, scale in adapters]
    if (model := data.pop("model", None)) is not None:
        if not _MODEL.fullmatch(model):
            raise InvalidRequest(
                f"model must be a model name: letters, digits and . _ : / -, {MAX_NAME_CHARS} at most.", param="model"
            )
        requested["model"] = data["model"] = model
    if (size := data.pop("size", None)) is not None:
        _not_both("size", data, "width", "height")
        data["width"], data["height"] = nearest_size(size)
        requested["size"] = size.strip().lower()  # WIDTHxHEIGHT, as nearest_size checked
    if (seconds := data.pop("seconds", None)) is not None:
        _not_both("seconds", data, "num_frames")
        data["num_frames"] = frames_for(seconds, _fps_of(data))
        requested["seconds"] = f"{float(seconds):g}"
    if (reference := data.pop("input_reference[image_url]", None)) is not None:
        data["image_base64" if reference.startswith("data:") else "image_url"] = reference
    if upload is not None:
        requested["input_reference"] = safe_filename(upload.filename)
        data["image_base64"] = base64.b64encode(upload.data).decode("ascii")
    return data, requested


def safe_filename(filename: str) -> str:
    """An upload's file name as it may be stored and shown: its last part, printable, 64 characters
    at most; `upload` when nothing is left."""
    name = "".join(c for c in filename.replace("\\", "/").rsplit("/", 1)[-1] if c.isprintable())
    return name[:MAX_NAME_CHARS] or "upload"


def nearest_size(size: str) -> tuple[int, int]:
    """`WIDTHxHEIGHT` to the nearest multiples of SIZE_MULTIPLE (ties go down: 1280x720 is 1280x704)."""
    match = _SIZE.fullmatch(size.strip()) if len(size) <= 16 else None
    if match is None:
        raise InvalidRequest("size must look like WIDTHxHEIGHT, for example 1280x704.", param="size")
    width, height = (_nearest_multiple(int(v)) for v in match.groups())
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise InvalidRequest(f"size {size} is outside {MIN_SIDE}x{MIN_SIDE} to {MAX_SIDE}x{MAX_SIDE}.", param="size")
    return width, height


def frames_for(seconds: str, fps: int) -> int:
    """The 4n+1 frame count nearest to `seconds` at `fps` (4 s at 24 fps is 97 frames)."""
    text = seconds.strip()
    if len(seconds) > 16 or not _SECONDS.fullmatch(text):
        raise InvalidRequest("seconds must be a number of seconds, such as 4 or 4.5.", param="seconds")
    duration = float(text)
    if not duration > 0:
        raise InvalidRequest("seconds must be positive.", param="seconds")
    frames = round((duration * fps - 1) / 4) * 4 + 1
    if frames > MAX_FRAMES:
        raise InvalidRequest(
            f"seconds={seconds} is longer than the model can make: at most {MAX_FRAMES} frames, "
            f"{MAX_FRAMES / fps:.2f} s at {fps} fps.",
            param="seconds",
        )
    return max(frames, MIN_FRAMES)


def _nearest_multiple(value: int) -> int:
    quotient, remainder = divmod(value, SIZE_MULTIPLE)
    return (quotient + (remainder > SIZE_MULTIPLE // 2)) * SIZE_MULTIPLE


def _fps_of(data: dict[str, Any]) -> int:
    fps = data.get("fps")
    # An invalid fps is reported by VideoRequest's own validation; the default serves meanwhile.
    if isinstance(fps, str) and fps.isascii() and fps.isdecimal() and 0 < int(fps) <= MAX_FPS:
        return int(fps)
    return int(VideoRequest.model_fields["fps"].default)


def _not_both(field: str, data: dict[str, Any], *ours: str) -> None:
    for name in ours:
        if name in data:
            raise InvalidRequest(f"Give {field} or {' and '.join(ours)}, not both.", param=field)
