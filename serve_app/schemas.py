"""Pydantic models at the service's boundaries: the HTTP request and response, the job object,
and what a generator replica receives and sends back."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from serve_app.capacity import Capacity
from serve_app.limits import MAX_FRAMES, MAX_SEED, MIN_FRAMES, SIZE_MULTIPLE

# The Wan2.2 authors' default negative prompt (sample_neg_prompt of the Wan2.2 repo's shared
# config). diffusers does not apply it, so we do when the request omits `negative_prompt`.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
    "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
SpeedMode = Literal["quality", "fast"]


class VideoShape(BaseModel):
    """What the GPU memory a video needs depends on."""

    width: int
    height: int
    num_frames: int
    guidance: bool = Field(description="guidance_scale > 1: a second pass a step.")
    image: bool = Field(description="A reference image to encode.")

    @classmethod
    def of(cls, request: "VideoRequest | GenerationRequest", image: bool) -> "VideoShape":
        return cls(
            width=request.width,
            height=request.height,
            num_frames=request.num_frames,
            guidance=request.guidance_scale > 1.0,
            image=image,
        )

    def refusal(self, capacity: Capacity) -> str | None:
        """Why `capacity` cannot make it, or None."""
        return capacity.refusal(self.width, self.height, self.num_frames, guidance=self.guidance, image=self.image)


class VideoRequest(BaseModel):
    """The body of `POST /predict` (and of a job): the hosted API's fields, defaults and ranges."""

    # Strict: "704" is not 704. Unknown fields are refused so a typo never silently becomes a default.
    model_config = ConfigDict(strict=True, extra="forbid")

    prompt: str = Field(min_length=1, max_length=10_000, description="Text describing the video.")
    negative_prompt: str | None = Field(
        None,
        max_length=10_000,
        description="What the video should not contain. Omitted or null: the Wan2.2 authors' "
        "default negative prompt; an explicit empty string: none.",
    )
    height: int = Field(704, ge=32, le=2048, description="Video height, a multiple of 32.")
    width: int = Field(1280, ge=32, le=2048, description="Video width, a multiple of 32.")
    num_frames: int = Field(MAX_FRAMES, ge=MIN_FRAMES, le=MAX_FRAMES, description="Frame count, of the form 4n+1.")
    num_inference_steps: int = Field(50, ge=1, le=100, description="Denoising steps.")
    guidance_scale: float = Field(5.0, ge=1.0, le=20.0, description="Classifier-free guidance strength.")
    fps: int = Field(24, ge=1, le=60, description="Frame rate of the output video.")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Random seed; omitted: drawn and reported in details.seed."
    )
    image_url: str | None = Field(
        None, min_length=1, max_length=4096, description="http(s) URL of the first frame (text+image to video)."
    )
    image_base64: str | None = Field(
        None, min_length=1, description="The first frame as base64 or a data:image/...;base64, URL."
    )
    webhook_url: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="http(s) URL that receives a signed POST (Standard Webhooks) when the job completes or fails.",
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

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        if value % SIZE_MULTIPLE:
            below = value // SIZE_MULTIPLE * SIZE_MULTIPLE
            nearest = [v for v in (below, below + SIZE_MULTIPLE) if 32 <= v <= 2048]
            raise PydanticCustomError(
                "size_multiple",
                "must be a multiple of 32; nearest valid values: {nearest}",
                {"nearest": " or ".join(map(str, nearest))},
            )
        return value

    @field_validator("num_frames")
    @classmethod
    def _four_n_plus_one(cls, value: int) -> int:
        if value % 4 != 1:
            below = (value - 1) // 4 * 4 + 1
            nearest = [v for v in (below, below + 4) if 25 <= v <= 121]
            raise PydanticCustomError(
                "frame_count",
                "must be of the form 4n+1 (25, 29, ..., 121); nearest valid values: {nearest}",
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


class StageTimings(BaseModel):
    """Seconds spent in each stage of one generation."""

    text_encoding_s: float
    denoising_s: float
    decoding_s: float
    transfer_s: float = Field(0.0, description="Copying the decoded uint8 video from the GPU to the host.")
    encoding_s: float


class GenerationRequest(BaseModel):
    """What a generator replica needs: every parameter resolved, the image already prepared."""

    # Stored as JSON while queued: bytes as base64.
    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    prompt: str
    negative_prompt: str
    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    fps: int
    seed: int
    image_png: bytes | None = Field(None, description="First frame, already `width` x `height`.")
    speed_mode: SpeedMode = "quality"

    @property
    def shape(self) -> VideoShape:
        return VideoShape.of(self, image=self.image_png is not None)


class Started(BaseModel):
    """Sent by a generator replica first, when it starts a job."""

    worker: str | None = Field(description="The Ray node and GPU the job runs on (None outside Ray).")
    runtime: dict = Field(description="How the replica runs the model: device, dtype, plan, attention backend...")
    capacity: Capacity | None = Field(None, description="What its GPU memory allows; None on a CPU.")


class Progress(BaseModel):
    """Sent by a generator replica after each denoising step."""

    step: int
    total: int


class GenerationFailure(BaseModel):
    """The last message of a generator replica for a job that failed in a way the user can act on."""

    code: str
    message: str


class GenerationResult(BaseModel):
    """The last message of a generator replica for a job."""

    video_mp4: bytes
    thumbnail_jpeg: bytes = Field(description="The first frame.")
    model: str
    timings: StageTimings
    peak_gpu_memory_bytes: int | None = Field(None, description="None on a CPU.")
    simulated: bool = Field(False, description="Made by the capacity simulator: timings only, no real video.")


class JobTimings(StageTimings):
    """Seconds a job spent waiting for a replica, then in each stage of its generation."""

    queued_s: float


class VideoDetails(BaseModel):
    """Every effective parameter of a generation, so that it can be reproduced."""

    prompt: str
    negative_prompt: str
    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    fps: int
    seed: int
    speed_mode: SpeedMode = "quality"
    mode: Literal["t2v", "ti2v"]
    image_url: str | None = None
    model: str | None = None
    requested: dict[str, str] | None = Field(
        None, description="OpenAI-style `size`, `seconds`, `model` as sent, before mapping to the values above."
    )
    timings: JobTimings | None = None
    simulated: bool | None = Field(
        None, description="True when the capacity simulator (`model: simulated`) made it: its video is a placeholder."
    )


class PredictResponse(BaseModel):
    video_base64: str = Field(description="The MP4 (H.264, yuv420p, +faststart), base64-encoded.")
    details: VideoDetails


JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class JobError(BaseModel):
    code: str
    message: str


class Job(BaseModel):
    """A video job, as `GET /v1/videos/{id}` returns it (the OpenAI video object, plus ours)."""

    id: str
    object: Literal["video"] = "video"
    status: JobStatus
    progress: int = Field(0, ge=0, le=100, description="From denoising steps; 100 only when completed.")
    queue_position: int | None = Field(None, description="While queued: 1 means next to start.")
    worker: str | None = Field(None, description="The Ray node and GPU that ran the job.")
    created_at: int = Field(description="Unix seconds.")
    started_at: int | None = None
    completed_at: int | None = Field(None, description="When the job ended, whatever its final status.")
    expires_at: int | None = Field(None, description="When a finished job and its files are deleted.")
    model: str
    prompt: str
    size: str = Field(description="WIDTHxHEIGHT of the video.")
    seconds: str = Field(description="Its duration: num_frames / fps.")
    details: VideoDetails
    error: JobError | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class Refusal(BaseModel):
    """Why the jobs deployment did not queue a request; the ingress turns it into an HTTP error."""

    status: int
    code: str
    message: str
    param: str | None = None
    retry_after_s: int | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job]
    first_id: str | None
    last_id: str | None
    has_more: bool


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
VIDEO_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": VideoRequest.model_json_schema()}},
    }
}
