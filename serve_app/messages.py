"""The messages between the deployments, as pydantic models: what the Jobs deployment sends a
Generator replica and receives back (a request; then `Started`, `Progress`, and a result or a
failure), and what the Ingress receives from Jobs (the job object, which is also the jobs API's
resource, a page of jobs, a refusal)."""

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from serve_app.capacity import Capacity

# The Wan2.2 authors' default negative prompt (sample_neg_prompt of the Wan2.2 repo's shared
# config). diffusers does not apply it, so we do when the request omits `negative_prompt`.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
    "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
SpeedMode = Literal["quality", "fast"]


class SizedRequest(Protocol):
    """A request's size and guidance: a `GenerationRequest` or the API's `VideoRequest`."""

    width: int
    height: int
    num_frames: int
    guidance_scale: float


class VideoShape(BaseModel):
    """What the GPU memory a video needs depends on."""

    width: int
    height: int
    num_frames: int
    guidance: bool = Field(description="guidance_scale > 1: a second pass a step.")
    image: bool = Field(description="A reference image to encode.")

    @classmethod
    def of(cls, request: SizedRequest, image: bool) -> "VideoShape":
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


class StageTimings(BaseModel):
    """Seconds spent in each stage of one generation."""

    text_encoding_s: float
    denoising_s: float
    decoding_s: float
    transfer_s: float = Field(0.0, description="Copying the decoded uint8 video from the GPU to the host.")
    encoding_s: float


class GenerationParameters(BaseModel):
    """Every parameter of a generation, resolved: what reproduces it."""

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
    model: str = Field(description="The served model's id.")
    shift: float = Field(description="The flow shift of the sampling schedule.")


class GenerationRequest(GenerationParameters):
    """What a generator replica needs: every parameter resolved, the image already prepared."""

    # Stored as JSON while queued: bytes as base64.
    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    image_png: bytes | None = Field(None, description="First frame, already `width` x `height`.")

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


class JobTimings(StageTimings):
    """Seconds a job spent waiting for a replica, then in each stage of its generation."""

    queued_s: float


class VideoDetails(GenerationParameters):
    """Every effective parameter of a generation, so that it can be reproduced, and what came of it."""

    mode: Literal["t2v", "ti2v"]
    image_url: str | None = None
    requested: dict[str, str] | None = Field(
        None, description="OpenAI-style `size`, `seconds`, `model` as sent, before mapping to the values above."
    )
    timings: JobTimings | None = None


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


class Submission(BaseModel):
    """A job, as the Ingress asks Jobs to queue it."""

    owner: str = Field(description="The API key's id.")
    request: GenerationRequest
    details: VideoDetails
    idempotency_key: str | None = None
    request_hash: str | None = Field(None, description="Of the request body: a retry must send the same.")
    webhook_url: str | None = None
