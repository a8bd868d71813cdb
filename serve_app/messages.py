"""The messages between the deployments, as pydantic models: what the Jobs deployment sends a
Generator replica and receives back (a request; then `Started`, `Progress`, and a result or a
failure), and what the Ingress receives from Jobs (a job's state, a page of jobs, a refusal).
The HTTP API's resources are the Ingress's (`api.resources`), the stored record the Jobs
deployment's (`jobs.store`)."""

import hashlib
from enum import StrEnum
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from serve_app.capacity import Capacity
from serve_app.error_codes import ErrorCode

# The Wan2.2 authors' default negative prompt (sample_neg_prompt of the Wan2.2 repo's shared
# config). diffusers does not apply it, so we do when the request omits `negative_prompt`.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
    "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
SpeedMode = Literal["quality", "fast"]


class SizedRequest(Protocol):
    """A request's size and guidance: a `GenerationRequest` or the API's `VideoRequest` (read-only:
    a GenerationRequest is frozen)."""

    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def num_frames(self) -> int: ...
    @property
    def guidance_scale(self) -> float | None: ...  # None: not yet resolved from its model


class VideoShape(BaseModel):
    """What the GPU memory a video needs depends on."""

    width: int
    height: int
    num_frames: int
    guidance: bool = Field(description="guidance_scale > 1: a second pass a step.")
    image: bool = Field(description="A reference image to encode.")

    @classmethod
    def of(cls, request: SizedRequest, image: bool) -> "VideoShape":
        if request.guidance_scale is None:  # an API request before `api.models.apply_model`
            raise ValueError("a request's shape needs its guidance_scale, resolved from its model")
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
    lora_loading_s: float = Field(0.0, description="Fetching and loading the adapters this replica did not hold.")


class LoraSource(BaseModel):
    """Where a Generator replica gets an adapter (`kind` as `config.lora_location_kind` says)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["url", "path", "hub", "tiny"]
    location: str
    revision: str | None = None
    sha256: str | None = Field(None, description="Pinned by the operator: another file is refused.")


class LoraChoice(BaseModel):
    """One adapter of a request, its source resolved by the Ingress."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(description="As the request named it (`loras[i].path`).")
    scale: float
    source: LoraSource


class AppliedLora(BaseModel):
    """An adapter a generation used (`details.loras`)."""

    path: str
    scale: float
    sha256: str | None = Field(None, description="Of the adapter's file; None until a replica has read it.")


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
    loras: tuple[LoraChoice, ...] = ()

    @property
    def shape(self) -> VideoShape:
        return VideoShape.of(self, image=self.image_png is not None)

    @property
    def adapter_set(self) -> str | None:
        """The key of its set of adapters, which Serve's model multiplexing routes on (to a replica
        that holds them); None without adapters: any replica will do."""
        if not self.loras:
            return None
        sources = sorted({lora.source.model_dump_json() for lora in self.loras})
        return "loras-" + hashlib.sha256("\n".join(sources).encode()).hexdigest()[:24]


class Started(BaseModel):
    """Sent by a generator replica first, when it starts a job."""

    worker: str | None = Field(description="The Ray node and GPU the job runs on (None outside Ray).")
    runtime: dict[str, object] = Field(
        description="How the replica runs the model: device, dtype, plan, attention backend..."
    )
    capacity: Capacity | None = Field(None, description="What its GPU memory allows; None on a CPU.")


class Progress(BaseModel):
    """Sent by a generator replica after each denoising step."""

    step: int
    total: int


class GenerationFailure(BaseModel):
    """The last message of a generator replica for a job that failed in a way the user can act on."""

    code: ErrorCode
    message: str
    param: str | None = Field(None, description="The request field at fault (`loras[0].path`).")


class GenerationResult(BaseModel):
    """The last message of a generator replica for a job."""

    video_mp4: bytes
    thumbnail_jpeg: bytes = Field(description="The first frame.")
    model: str
    timings: StageTimings
    peak_gpu_memory_bytes: int | None = Field(None, description="None on a CPU.")
    loras: list[AppliedLora] = Field(default_factory=list)
    parallelism: dict[str, int] | None = Field(None, description="How the replica split the video over its GPUs.")


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
    loras: list[AppliedLora] = Field(default_factory=list, description="The adapters applied, with their SHA-256.")
    parallelism: dict[str, int] | None = Field(
        None,
        description='How the generator replica split the video over its GPUs: `{"cfg": 2, "ulysses": 1}` is '
        'guidance\'s two passes on two GPUs, `{"cfg": 1, "ulysses": 1}` one GPU. Set when the video is made.',
    )


class JobStatus(StrEnum):
    """A job's status; its values are the API's strings."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """A final status: the job changes no more."""
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobError(BaseModel):
    code: ErrorCode
    message: str
    param: str | None = None


class Job(BaseModel):
    """A video job's state, as Jobs tells the Ingress (which shows it as `api.resources.Video`)."""

    id: str
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
        return self.status.is_terminal


class Refusal(BaseModel):
    """Why the jobs deployment did not queue a request; the ingress turns it into an HTTP error
    (its status is the code's)."""

    code: ErrorCode
    message: str
    param: str | None = None
    retry_after_s: int | None = None


class JobPage(BaseModel):
    """Some of a key's jobs, in the order asked for, and whether more follow."""

    jobs: list[Job]
    has_more: bool


class Submission(BaseModel):
    """A job, as the Ingress asks Jobs to queue it."""

    owner: str = Field(description="The API key's id.")
    request: GenerationRequest
    details: VideoDetails
    idempotency_key: str | None = None
    request_hash: str | None = Field(None, description="Of the request body: a retry must send the same.")
    webhook_url: str | None = None
