"""What a generator replica's GPU memory allows: the memory plans (where each model lives, whether
the VAE decodes in tiles), the peak bytes of each stage of a generation as a function of the video
size, and the largest video a plan fits.

Pure arithmetic on figures that `engine.memory` measures by tracing the modules: no torch here, so
the jobs deployment can refuse a video that no replica can make before it is queued.
"""

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from serve_app.limits import MIN_FRAMES, SIZE_MULTIPLE

GiB = 2**30

MemoryMode = Literal["full", "text_encoder_offload", "model_offload", "group_offload"]


class Plan(BaseModel):
    """Where the models live on a replica, how the VAE decodes, and how guidance runs.

    - `full`: every model on the GPU.
    - `text_encoder_offload`: the text encoder (UMT5-XXL, 10.6 GiB) comes to the GPU only to encode
      a job's prompts; one copy each way per job.
    - `model_offload`: one model on the GPU at a time (text encoder, transformer, VAE).
    - `group_offload`: layer by layer, the next layer's weights copied while one runs.
    - `vae_tiling`: the VAE decodes in overlapping tiles (a fraction of the memory, some more time).
    - `cfg_batch`: both guidance passes of a step in one batch of two (one transformer call, twice
      the activations) rather than one after the other.
    """

    model_config = ConfigDict(frozen=True)

    memory_mode: MemoryMode
    vae_tiling: bool
    cfg_batch: bool

    def __str__(self) -> str:
        return (
            f"{self.memory_mode}, VAE tiling {'on' if self.vae_tiling else 'off'}, "
            f"guidance {'batched' if self.cfg_batch else 'one pass at a time'}"
        )


def _plans() -> tuple[Plan, ...]:
    """Fastest first, by what each lever costs a job: the text encoder's two copies (a second or two),
    then tiling (part of the decode), then whole-model copies (seconds), then guidance one pass at
    a time (5-10 % of every step), and last the copies of every layer at every step."""
    placements: list[tuple[MemoryMode, bool]] = [
        ("full", False), ("text_encoder_offload", False), ("full", True), ("text_encoder_offload", True),
        ("model_offload", False), ("model_offload", True),
    ]  # fmt: skip
    grouped: list[tuple[MemoryMode, bool]] = [("group_offload", False), ("group_offload", True)]
    return tuple(
        Plan(memory_mode=mode, vae_tiling=tiling, cfg_batch=batched)
        for group in (placements, grouped)
        for batched in (True, False)
        for mode, tiling in group
    )


PLANS = _plans()

Stage = Literal["text_encoding", "image_encoding", "denoising_batch_1", "denoising_batch_2", "decoding"]


class StageFit(BaseModel):
    """Peak bytes of one stage: fixed + per_pixel x (width x height) + per_voxel x (width x height x
    frames). Convolutions and memory-efficient attention make every activation linear in the pixels
    of a frame, or of the whole video."""

    model_config = ConfigDict(frozen=True)

    fixed: float
    per_pixel: float = 0.0
    per_voxel: float = 0.0

    def bytes(self, width: int, height: int, num_frames: int) -> float:
        pixels = width * height
        return self.fixed + self.per_pixel * pixels + self.per_voxel * pixels * num_frames

    def __add__(self, other: "StageFit") -> "StageFit":
        return StageFit(
            fixed=self.fixed + other.fixed,
            per_pixel=self.per_pixel + other.per_pixel,
            per_voxel=self.per_voxel + other.per_voxel,
        )


class Capacity(BaseModel):
    """A replica's plan, the memory it may use, and each stage's peak under that plan (weights on
    the GPU during the stage included). Sent by the replica with every job it starts."""

    model_config = ConfigDict(frozen=True)

    plan: Plan
    budget_bytes: int
    stages: dict[Stage, StageFit]

    def peak_bytes(self, width: int, height: int, num_frames: int, guidance: bool, image: bool) -> float:
        """The highest of the stages that a video of this size runs through."""
        stages = self._stages_of(guidance, image)
        return max(self.stages[stage].bytes(width, height, num_frames) for stage in stages)

    def fits(self, width: int, height: int, num_frames: int, guidance: bool, image: bool) -> bool:
        return self.peak_bytes(width, height, num_frames, guidance, image) <= self.budget_bytes

    def largest_frames(self, width: int, height: int, guidance: bool, image: bool) -> int:
        """The most frames (4n+1) of `width` x `height` that fit; 0 if not even one does."""
        pixels = width * height
        frames = math.inf
        for stage in self._stages_of(guidance, image):
            fit = self.stages[stage]
            room = self.budget_bytes - fit.fixed - fit.per_pixel * pixels
            if room < 0:
                return 0
            if fit.per_voxel > 0:
                frames = min(frames, room / (fit.per_voxel * pixels))
        if frames == math.inf:
            return 10**9
        return max(0, (int(frames) - 1) // 4 * 4 + 1)

    def largest_size(self, width: int, height: int, num_frames: int, guidance: bool, image: bool) -> tuple[int, int]:
        """The largest size of the same aspect ratio (multiples of 32) that fits with `num_frames`;
        (0, 0) if none does."""
        for w in range(width - width % SIZE_MULTIPLE, 0, -SIZE_MULTIPLE):
            h = height * w // width // SIZE_MULTIPLE * SIZE_MULTIPLE
            if h and self.fits(w, h, num_frames, guidance, image):
                return w, h
        return 0, 0

    def refusal(self, width: int, height: int, num_frames: int, guidance: bool, image: bool) -> str | None:
        """Why a video of this size cannot be made here, with the largest that can; None if it can."""
        peak = self.peak_bytes(width, height, num_frames, guidance, image)
        if peak <= self.budget_bytes:
            return None
        message = (
            f"{width}x{height} with {num_frames} frames needs about {peak / GiB:.1f} GiB of GPU memory; this "
            f"server's generators have {self.budget_bytes / GiB:.1f} GiB for a video ({self.plan})."
        )
        frames = self.largest_frames(width, height, guidance, image)
        if frames >= MIN_FRAMES:
            message += f" At {width}x{height} they make up to {frames} frames."
        smaller = self.largest_size(width, height, num_frames, guidance, image)
        if smaller != (0, 0):
            message += f" With {num_frames} frames, up to {smaller[0]}x{smaller[1]}."
        return message

    def _stages_of(self, guidance: bool, image: bool) -> list[Stage]:
        """A request with guidance (guidance_scale > 1) denoises in a batch of two under a plan that
        batches it; an image is encoded first."""
        denoising: Stage = "denoising_batch_2" if guidance and self.plan.cfg_batch else "denoising_batch_1"
        encoding: list[Stage] = ["image_encoding"] if image else []
        return ["text_encoding", *encoding, denoising, "decoding"]
