"""The HTTP API's own wire models: the body of `POST /predict` and `POST /v1/videos`, its answer,
and the error shape. The job object the API returns is `api.resources.Video`."""

import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from serve_app.limits import (
    MAX_FPS,
    MAX_FRAMES,
    MAX_GUIDANCE,
    MAX_LORA_SCALE,
    MAX_LORAS,
    MAX_NAME_CHARS,
    MAX_SEED,
    MAX_SHIFT,
    MAX_SIDE,
    MAX_STEPS,
    MAX_TEXT_CHARS,
    MAX_URL_CHARS,
    MIN_FRAMES,
    MIN_GUIDANCE,
    MIN_SIDE,
    SIZE_MULTIPLE,
)
from serve_app.messages import SpeedMode, VideoDetails, VideoShape

# What the schema says of a width or height beyond its bounds (checked by `_size_multiple`).
_SIZE: JsonDict = {"multipleOf": SIZE_MULTIPLE}
# Unicode categories of control characters and lone surrogates.
_CONTROL = frozenset({"Cc", "Cs"})


class LoraRequest(BaseModel):
    """One adapter of a request: which (`path`) and how strongly (`scale`)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    path: str = Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="The name of an adapter this server registered; where its operator allows it, also a Hugging "
        "Face id (`owner/repo` or `owner/repo/file.safetensors`) or an https URL of a `.safetensors` file.",
    )
    scale: float = Field(1.0, ge=0, le=MAX_LORA_SCALE, description="How strongly it applies; 0: not at all.")


class VideoRequest(BaseModel):
    """The body of `POST /predict` (and of a job): the hosted API's fields, defaults and ranges."""

    # Strict: "704" is not 704. Unknown fields are refused so a typo never silently becomes a default.
    # The schema says what it can of the rules below, for clients (and Schemathesis) to read.
    model_config = ConfigDict(
        strict=True, extra="forbid", json_schema_extra={"not": {"required": ["image_url", "image_base64"]}}
    )

    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="Text describing the video.")
    negative_prompt: str | None = Field(
        None,
        max_length=MAX_TEXT_CHARS,
        description="What the video should not contain. Omitted or null: the Wan2.2 authors' "
        "default negative prompt; an explicit empty string: none.",
    )
    height: int = Field(
        704,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        description=f"Video height, a multiple of {SIZE_MULTIPLE}.",
        json_schema_extra=_SIZE,
    )
    width: int = Field(
        1280,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        description=f"Video width, a multiple of {SIZE_MULTIPLE}.",
        json_schema_extra=_SIZE,
    )
    num_frames: int = Field(
        MAX_FRAMES,
        ge=MIN_FRAMES,
        le=MAX_FRAMES,
        description="Frame count, of the form 4n+1.",
        json_schema_extra={"enum": list(range(MIN_FRAMES, MAX_FRAMES + 1, 4))},
    )
    model: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_NAME_CHARS,
        description="The id of a served model (`GET /v1/models`); omitted: the default one.",
    )
    num_inference_steps: int | None = Field(
        None, ge=1, le=MAX_STEPS, description="Denoising steps. Omitted: the model's default (50 for Wan2.2)."
    )
    guidance_scale: float | None = Field(
        None,
        ge=MIN_GUIDANCE,
        le=MAX_GUIDANCE,
        description="Classifier-free guidance strength. Omitted: the model's default (5.0 for Wan2.2; 1.0, none, "
        "for a distilled model).",
    )
    shift: float | None = Field(
        None,
        gt=0,
        le=MAX_SHIFT,
        description="Flow shift of the sampling schedule. Omitted: the model's, by default following the size as "
        "the Wan authors recommend: 5.0 from 720p (shorter side 704 or more), 3.0 below.",
    )
    fps: int = Field(24, ge=1, le=MAX_FPS, description="Frame rate of the output video.")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Random seed; omitted: drawn and reported in details.seed."
    )
    image_url: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="http(s) URL of the first frame (text+image to video).",
    )
    image_base64: str | None = Field(
        None, min_length=1, description="The first frame as base64 or a data:image/...;base64, URL."
    )
    webhook_url: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="http(s) URL that receives a signed POST (Standard Webhooks) when the job completes or fails.",
    )
    loras: list[LoraRequest] | None = Field(
        None,
        max_length=MAX_LORAS,
        description=f"LoRA adapters to apply, at most {MAX_LORAS}, combined by their scales.",
    )
    speed_mode: SpeedMode = Field(
        "quality",
        description="`fast`: step caching (FirstBlockCache) skips most of the transformer on steps where its "
        "first block's output barely changed; faster, with some loss of detail and motion (see the README).",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, prompt: str) -> str:
        if not prompt.strip():
            raise PydanticCustomError("blank_prompt", "prompt must contain text")
        return prompt

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _plain_text(cls, text: str | None) -> str | None:
        # Text as people write it: no control characters but tabs and line breaks, no lone surrogates.
        if text is not None and any(unicodedata.category(c) in _CONTROL and c not in "\t\n\r" for c in text):
            raise PydanticCustomError("control_characters", "must not contain control characters")
        return text

    @field_validator("image_url", "webhook_url")
    @classmethod
    def _url_text(cls, url: str | None) -> str | None:
        if url is not None and any(c.isspace() or unicodedata.category(c) in _CONTROL for c in url):
            raise PydanticCustomError("url_characters", "must not contain spaces or control characters")
        return url

    @field_validator("height", "width")
    @classmethod
    def _size_multiple(cls, value: int) -> int:
        if value % SIZE_MULTIPLE:
            below = value // SIZE_MULTIPLE * SIZE_MULTIPLE
            nearest = [v for v in (below, below + SIZE_MULTIPLE) if MIN_SIDE <= v <= MAX_SIDE]
            raise PydanticCustomError(
                "size_multiple",
                "must be a multiple of {multiple}; nearest valid values: {nearest}",
                {"multiple": SIZE_MULTIPLE, "nearest": " or ".join(map(str, nearest))},
            )
        return value

    @field_validator("num_frames")
    @classmethod
    def _four_n_plus_one(cls, value: int) -> int:
        if value % 4 != 1:
            below = (value - 1) // 4 * 4 + 1
            nearest = [v for v in (below, below + 4) if MIN_FRAMES <= v <= MAX_FRAMES]
            raise PydanticCustomError(
                "frame_count",
                f"must be of the form 4n+1 ({MIN_FRAMES}, {MIN_FRAMES + 4}, ..., {MAX_FRAMES}); "
                "nearest valid values: {nearest}",
                {"nearest": " or ".join(map(str, nearest))},
            )
        return value

    @model_validator(mode="after")
    def _one_image_at_most(self) -> "VideoRequest":
        if self.image_url is not None and self.image_base64 is not None:
            raise PydanticCustomError("two_images", "give at most one of image_url and image_base64")
        return self

    @property
    def mode(self) -> Literal["t2v", "ti2v"]:
        return "t2v" if self.image_url is None and self.image_base64 is None else "ti2v"

    @property
    def shape(self) -> VideoShape:
        return VideoShape.of(self, image=self.mode == "ti2v")


_BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "default", "maxLength")


def field_bounds(model: type[BaseModel] = VideoRequest) -> dict[str, dict[str, Any]]:
    """Each request field's bounds and default, from its JSON schema (what the page and the CLI
    show): an optional field's bounds are those of its non-null type, its default None. `model`:
    the request's, or an adapter's (`LoraRequest`)."""
    bounds = {}
    for name, field in model.model_json_schema()["properties"].items():
        typed: dict[str, Any] = next((option for option in field.get("anyOf", []) if option.get("type") != "null"), {})
        bounds[name] = {key: value for key, value in {**typed, **field}.items() if key in _BOUNDS}
    return bounds


class PredictResponse(BaseModel):
    video_base64: str = Field(description="The MP4 (H.264, yuv420p, +faststart), base64-encoded.")
    details: VideoDetails


class JobDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class ErrorDetail(BaseModel):
    code: str
    message: str
    param: str | None = None
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, all in the error shape."""
    return {status: {"model": ErrorResponse, "description": text} for status, text in descriptions.items()}


# Bodies of POST /predict and /v1/videos are parsed by hand (after auth), so FastAPI cannot infer
# their schema: declare it.
VIDEO_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": VideoRequest.model_json_schema()}},
    }
}
