"""What the OpenAI SDK's `videos.create` sends (multipart: `prompt`, `model`, `seconds`, `size`,
an `input_reference` file) mapped onto the fields of `VideoRequest`. Our own fields may come as
form fields too. What was asked for before mapping is kept, for the job's `details.requested`."""

import base64
import re
from dataclasses import dataclass
from typing import Any

from serve_app.api.errors import InvalidRequest
from serve_app.api.protocol import VideoRequest
from serve_app.limits import MAX_FRAMES, MIN_FRAMES, SIZE_MULTIPLE


@dataclass(frozen=True)
class UploadedImage:
    filename: str
    data: bytes


_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


def map_form(fields: dict[str, str], upload: UploadedImage | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The VideoRequest fields of a form, and what its OpenAI-style fields asked for (an uploaded
    `input_reference` by its file name)."""
    data: dict[str, Any] = dict(fields)
    requested: dict[str, str] = {}
    if (model := data.pop("model", None)) is not None:
        requested["model"] = model  # accepted; the job reports the model actually served
    if (size := data.pop("size", None)) is not None:
        _not_both("size", data, "width", "height")
        requested["size"] = size
        data["width"], data["height"] = nearest_size(size)
    if (seconds := data.pop("seconds", None)) is not None:
        _not_both("seconds", data, "num_frames")
        requested["seconds"] = seconds
        data["num_frames"] = frames_for(seconds, _fps_of(data))
    if (reference := data.pop("input_reference[image_url]", None)) is not None:
        data["image_base64" if reference.startswith("data:") else "image_url"] = reference
    if upload is not None:
        requested["input_reference"] = upload.filename
        data["image_base64"] = base64.b64encode(upload.data).decode("ascii")
    return data, requested


def nearest_size(size: str) -> tuple[int, int]:
    """`WIDTHxHEIGHT` to the nearest multiples of 32 (ties go down: 1280x720 is 1280x704)."""
    match = _SIZE.match(size)
    if match is None:
        raise InvalidRequest("size must look like WIDTHxHEIGHT, for example 1280x704.", param="size")
    width, height = (_nearest_multiple(int(v)) for v in match.groups())
    if not (32 <= width <= 2048 and 32 <= height <= 2048):
        raise InvalidRequest(f"size {size} is outside 32x32 to 2048x2048.", param="size")
    return width, height


def frames_for(seconds: str, fps: int) -> int:
    """The 4n+1 frame count nearest to `seconds` at `fps` (4 s at 24 fps is 97 frames)."""
    try:
        duration = float(seconds)
    except ValueError:
        raise InvalidRequest("seconds must be a number.", param="seconds") from None
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
    return (
        int(fps)
        if isinstance(fps, str) and fps.isdigit() and int(fps) > 0
        else VideoRequest.model_fields["fps"].default
    )


def _not_both(field: str, data: dict[str, Any], *ours: str) -> None:
    for name in ours:
        if name in data:
            raise InvalidRequest(f"Give {field} or {' and '.join(ours)}, not both.", param=field)
