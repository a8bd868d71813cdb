"""Typed application arguments (the `args` of an application in a Serve config file), and the
secrets that come from the environment instead."""

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.limits import MAX_GUIDANCE, MAX_SHIFT, MAX_STEPS, MIN_GUIDANCE, MODEL_ID_PATTERN

DEFAULT_MODEL = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
DATABASE_URL_ENV = "WAN_DATABASE_URL"

AttentionBackend = Literal[
    "auto", "native", "_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3", "sage"
]
CompileMode = Literal["off", "regional", "full"]
MemoryMode = Literal["auto", "full", "text_encoder_offload", "model_offload", "group_offload"]
Switch = Literal["auto", "on", "off"]
Dtype = Literal["auto", "bfloat16", "float32"]
# Where a request's LoRA adapter may come from: the operator's registry, the Hugging Face hub, a URL.
LoraSourceKind = Literal["registered", "hub", "url"]
# `tiny-style` as a registry source: the random adapter of `tiny`, built locally (engine/tiny.py).
TINY_STYLE = "tiny-style"
# A hub id as a LoRA path: `owner/repo`, or `owner/repo/file.safetensors`.
HUB_LORA_PATTERN = r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}(/[\w./-]{1,200}\.safetensors)?"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
GpusPerReplica = Literal[1, 2, 4, 8]
# Wan2.2 TI2V-5B's attention heads: Ulysses gives each rank a whole number of them.
ATTENTION_HEADS = 24


class ParallelDegrees(BaseModel):
    """How a gang's ranks share one video: `cfg` ranks split guidance's two passes, and within each
    of those, `ulysses` x `ring` ranks split the transformer's sequence (context parallelism)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cfg: Literal[1, 2] = 1
    ulysses: int = Field(1, ge=1, le=8)
    ring: int = Field(1, ge=1, le=8)

    @model_validator(mode="after")
    def _heads_divide(self) -> "ParallelDegrees":
        if ATTENTION_HEADS % self.ulysses:
            raise ValueError(f"ulysses must divide the model's {ATTENTION_HEADS} attention heads")
        return self

    @property
    def world(self) -> int:
        """The ranks of the gang."""
        return self.cfg * self.ulysses * self.ring

    @property
    def details(self) -> dict[str, int]:
        """As a job's details name it; `ring` only where used."""
        return {"cfg": self.cfg, "ulysses": self.ulysses, **({"ring": self.ring} if self.ring > 1 else {})}


@dataclass(frozen=True)
class PipelineOptions:
    """What the app arguments of the same names ask for (their defaults are these); `auto` is
    resolved on the replica."""

    dtype: Dtype = "auto"
    cfg_batch: bool = True
    attention_backend: AttentionBackend = "auto"
    compile: CompileMode = "off"
    vae_tiling: Switch = "auto"
    memory_mode: MemoryMode = "auto"
    warmup_size: str = "1280x704x121"
    # GPU memory kept free for LoRA adapters: what the loaded ones may take at most.
    lora_memory_bytes: int = 0
    # With compilation: adapters hot-swapped into this many slots of rank `lora_rank` (0: none).
    lora_slots: int = 0
    lora_rank: int = 64

    @property
    def warmup_dimensions(self) -> tuple[int, int, int]:
        """(width, height, frames) of `warmup_size`."""
        width, height, frames = (int(side) for side in self.warmup_size.split("x"))
        return width, height, frames


class Recipe(BaseModel):
    """How a model samples: its scheduler, its steps and guidance (defaults and limits), its shift."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheduler: Literal["unipc", "dmd"] = Field(
        "unipc",
        description="`unipc`: the UniPC flow-matching solver (Wan2.2's own). `dmd`: FlowMatchEuler with "
        "stochastic re-noising at the fixed `timesteps` (a DMD-distilled model such as FastWan2.2).",
    )
    default_steps: int = Field(50, ge=1, le=MAX_STEPS)
    min_steps: int = Field(1, ge=1, le=MAX_STEPS)
    max_steps: int = Field(MAX_STEPS, ge=1, le=MAX_STEPS)
    guidance: bool = Field(True, description="Whether classifier-free guidance applies; false: guidance_scale is 1.")
    default_guidance: float = Field(5.0, ge=MIN_GUIDANCE, le=MAX_GUIDANCE)
    shift: float | None = Field(
        None,
        gt=0,
        le=MAX_SHIFT,
        description="The flow shift. None: by the size, as the Wan authors recommend: 5.0 from 720p (the shorter "
        "side 704 or more), 3.0 below. A request may choose its own, except with `dmd`, whose timesteps are fixed.",
    )
    timesteps: list[int] | None = Field(
        None, description="With `dmd`: the fixed timesteps, one step each (FastWan2.2: [1000, 757, 522])."
    )

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        if not self.min_steps <= self.default_steps <= self.max_steps:
            raise ValueError("the steps must satisfy min_steps <= default_steps <= max_steps")
        if not self.guidance and self.default_guidance != 1.0:
            raise ValueError("without guidance, default_guidance is 1.0")
        if (self.scheduler == "dmd") != (self.timesteps is not None):
            raise ValueError("`timesteps` are given with the dmd scheduler, and only with it")
        if self.timesteps is not None:
            steps = self.timesteps
            decreasing = all(a > b for a, b in zip(steps, steps[1:], strict=False))
            if not (steps and steps[0] <= 1000 and steps[-1] > 0 and decreasing):
                raise ValueError("dmd timesteps decrease from at most 1000 and stay above 0")
            if not self.min_steps == self.default_steps == self.max_steps == len(self.timesteps):
                raise ValueError("a dmd recipe makes one step per timestep: its steps are len(timesteps)")
        return self

    @property
    def fixed_timesteps(self) -> bool:
        return self.timesteps is not None

    def shift_for(self, width: int, height: int) -> float:
        """The model's shift at this size."""
        if self.shift is not None:
            return self.shift
        return 5.0 if min(width, height) >= 704 else 3.0


class ModelSpec(BaseModel):
    """One served model: an entry of the `models` app argument."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=f"^{MODEL_ID_PATTERN}$", description="What requests name it by (`model`).")
    checkpoint: str = Field(
        description="Hugging Face id or local folder of a Diffusers-format Wan2.2 TI2V checkpoint (FastWan2.2's "
        "too), or `tiny` / `tiny-turbo` (random weights built locally), or `simulated` (the capacity simulator)."
    )
    revision: str | None = Field(
        None, description="The hub revision (branch, tag or commit) to load; None: `main`. Pin a commit in production."
    )
    recipe: Recipe = Field(default_factory=Recipe)


def lora_location_kind(location: str) -> Literal["url", "path", "hub", "tiny"]:
    """What a LoRA location is: an https URL, a local file, a hub id, or the locally built
    `tiny-style` (raises ValueError for anything else)."""
    if location == TINY_STYLE:
        return "tiny"
    if location.startswith("https://"):
        return "url"
    if location.startswith(("/", "./", "../", "~")):
        return "path"
    if re.fullmatch(HUB_LORA_PATTERN, location) and ".." not in location:
        return "hub"
    raise ValueError(
        f"{location!r} is neither an https URL, a local path, a hub id (owner/repo[/file.safetensors]) nor {TINY_STYLE}"
    )


class LoraEntry(BaseModel):
    """An adapter of the operator's registry (`lora_registry`), by the name requests use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(
        description="A hub id (`owner/repo` or `owner/repo/file.safetensors`), a local path, an https URL of a "
        f"`.safetensors` file, or `{TINY_STYLE}` (a random adapter of `tiny`, built locally)."
    )
    revision: str | None = Field(None, description="With a hub id: the branch, tag or commit (pin a commit).")
    sha256: str | None = Field(
        None, pattern=SHA256_PATTERN, description="The file's SHA-256: another file is refused, a cached one reused."
    )

    @model_validator(mode="after")
    def _known_location(self) -> "LoraEntry":
        lora_location_kind(self.source)
        return self


class AppArgs(BaseModel):
    """Arguments of `serve_app.app:build_app`. Unknown keys are refused, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        DEFAULT_MODEL,
        description="Hugging Face id or local path of a Diffusers-format Wan2.2 TI2V checkpoint, "
        "or `tiny` for a small random checkpoint built locally (tests, CPU demos), or `simulated` for the "
        "capacity simulator: no model, each job takes the time of a latency model of an L40 (load tests).",
    )
    models: list[ModelSpec] | None = Field(
        None,
        min_length=1,
        description="The served models, the default first, each with its checkpoint, revision and recipe. "
        "Omitted: the one model of `model`, with Wan2.2's recipe.",
    )
    simulated_time_scale: float = Field(
        0.01,
        gt=0,
        description="With `model: simulated`, the factor applied to the L40 latency model's time: 0.01 turns "
        "a 6-minute job into 3.6 s.",
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto",
        description="Where the generator runs. `auto` takes the replica's GPU when it has one. "
        "`cpu` also makes generator replicas ask Ray for no GPU.",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "wan-serve",
        description="Folder where the `tiny` checkpoint is built once and reused.",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve without API keys. Without it, the app refuses to start when neither "
        "WAN_API_KEYS nor WAN_API_KEYS_FILE gives a key. Logged as a warning at every start.",
    )
    max_body_mb: float = Field(25.0, gt=0, description="Largest request body accepted (413 above).")
    max_image_mb: float = Field(
        15.0, gt=0, description="Largest reference image, decoded from base64 or downloaded (413 above)."
    )
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="Largest reference image in pixels, checked before decoding (413 above)."
    )
    image_fetch_timeout_s: float = Field(
        15.0, gt=0, description="Time allowed for downloading an `image_url`, redirects included."
    )
    url_allowlist: list[str] = Field(
        default_factory=list,
        description="Host names or IP networks (CIDR) that `image_url` and `webhook_url` may reach although "
        "they are not public, for example an internal image store. Empty: only public addresses.",
    )
    url_ports: list[int] = Field(
        [80, 443],
        description="The ports that `image_url` and `webhook_url` may use on a public host (an allow-listed one: "
        "any). Others are refused, with the same message as a refused address.",
    )
    max_constructor_retries: int = Field(
        3, ge=1, description="How often Ray retries a generator replica whose model fails to load."
    )
    data_dir: Path = Field(
        Path.home() / ".local" / "share" / "wan-serve",
        description="Folder of the jobs database when it is SQLite (the default), and of the results unless "
        "`results_url` is set. Keep it on a persistent volume: jobs and results survive restarts through it.",
    )
    database_url: str | None = Field(
        None,
        description="The jobs database: `postgresql://user@host/db` for several Jobs replicas (the environment "
        f"variable {DATABASE_URL_ENV} overrides it, so that a password lives in a Secret, not in a config file), "
        "or `sqlite:///path`. Default: SQLite in `data_dir`, for one machine.",
    )
    results_url: str | None = Field(
        None,
        description="Where videos and thumbnails are written, as an fsspec URL or path: a folder that "
        "every node mounts, or object storage such as `s3://bucket/prefix` (install `s3fs`). "
        "Default: `data_dir/results`.",
    )
    max_video_pixels: int | None = Field(
        None,
        gt=0,
        description="Largest width x height x num_frames accepted (400 above, before any GPU work): set it "
        "for the GPU type of the generator workers, so that what cannot fit is refused up front. None: no cap.",
    )
    max_generation_s: float | None = Field(
        None,
        gt=0,
        description="A generation running longer than this fails as `timeout`, and its GPU takes the next job "
        "(checked at every denoising step). None: no limit.",
    )
    max_streams_per_key: int = Field(
        16,
        ge=1,
        description="Event streams, long polls (a waiting `/predict`) and downloads one API key holds at once "
        "on an Ingress replica; past it, 429 with Retry-After.",
    )
    max_streams: int = Field(
        400,
        ge=1,
        description="Event streams, long polls and downloads that an Ingress replica holds at once, all keys "
        "together; past it, 429 with Retry-After.",
    )
    max_submissions_per_key: int = Field(
        4,
        ge=1,
        description="Submissions of one API key in flight on an Ingress replica (each may fetch and decode "
        "an image) before the next is refused with 429.",
    )
    max_submissions: int = Field(
        64,
        ge=1,
        description="Submissions in flight on an Ingress replica, all keys together; past it, 429.",
    )
    max_queued_jobs: int = Field(
        100,
        ge=1,
        description="Jobs waiting for a generator across the cluster; past it, submissions get 503 with "
        "Retry-After and leave no trace.",
    )
    max_jobs_per_key: int = Field(
        8, ge=1, description="Queued plus running jobs of one API key; past it, its submissions get 429."
    )
    max_stored_jobs_per_key: int = Field(
        1000, ge=1, description="Jobs one API key keeps (until they expire or are deleted); past it, 429."
    )
    max_stored_mb_per_key: float = Field(
        10_000, gt=0, description="Megabytes of videos one API key keeps; past it, its submissions get 429."
    )
    max_stored_gb: float | None = Field(
        None,
        gt=0,
        description="Gigabytes of videos stored by every key together (the results volume's size, less a "
        "margin); past it, submissions get 503 `storage_full` with Retry-After. None: no cap but the per-key one.",
    )
    retention_hours: float = Field(
        24.0, gt=0, description="How long a finished job and its files are kept before they are deleted."
    )
    jobs_heartbeat_s: float = Field(
        2.0, gt=0, description="How often each Jobs replica beats in the jobs database (and adopts orphaned jobs)."
    )
    jobs_silent_s: float = Field(
        10.0,
        gt=0,
        description="A Jobs replica not heard of for this long is taken for dead: another adopts its jobs (its "
        "queued ones run, its running ones fail as `interrupted`). At least 3 heartbeats.",
    )
    webhook_retry_delays_s: list[float] = Field(
        [1, 5, 30, 120, 600],
        description="Waits between webhook attempts when the receiver fails: one retry per entry.",
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Time allowed for one webhook attempt.")
    sse_keepalive_s: float = Field(
        15.0, gt=0, description="Idle time after which `/v1/videos/{id}/events` sends a keep-alive comment."
    )

    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins (e.g. https://studio.example.com) of web pages served elsewhere that may call "
        "the API from a browser. Empty: none; the page at `/` needs no CORS.",
    )

    dtype: Dtype = Field(
        PipelineOptions.dtype,
        description="Dtype of the transformer and the text encoder (the VAE is always float32). `auto`: bfloat16 on "
        "a GPU, float32 on a CPU; `bfloat16` on a CPU runs a GPU replica's dtypes there (slowly), for tests.",
    )
    cfg_batch: bool = Field(
        PipelineOptions.cfg_batch,
        description="Run the conditional and unconditional passes of each denoising step as one batch of two "
        "(same result, one transformer call a step, twice its activations) where the memory plan allows it; "
        "false: always one pass after the other.",
    )
    attention_backend: AttentionBackend = Field(
        PipelineOptions.attention_backend,
        description="Attention kernel: `auto` takes the first that works of FlashAttention-3 (Hopper), "
        "FlashAttention-2 and PyTorch's cuDNN attention, else PyTorch's default; `sage` (SageAttention, lossy: "
        "8-bit) only when named. The choice is reported with every job.",
    )
    compile: CompileMode = Field(
        PipelineOptions.compile,
        description="torch.compile of the transformer: `regional` (its repeated block, compiles in less time) or "
        "`full`, warmed up at replica start so that no user pays the compilation.",
    )
    warmup_size: str = Field(
        PipelineOptions.warmup_size,
        pattern=r"^\d+x\d+x\d+$",
        description="WIDTHxHEIGHTxFRAMES of the largest video the generator replicas prepare for: `auto` memory "
        "options choose the fastest plan that fits it, and a GPU replica (or a compiled one) generates it in 2 "
        "steps before it takes jobs.",
    )
    vae_tiling: Switch = Field(
        PipelineOptions.vae_tiling,
        description="Decode the video in tiles (less memory, a little slower). `auto`: only where the untiled "
        "decode would not fit (by the memory model).",
    )
    memory_mode: MemoryMode = Field(
        PipelineOptions.memory_mode,
        description="`full`: every model on the GPU; `text_encoder_offload`: the text encoder on the GPU only to "
        "encode prompts; `model_offload`: one model at a time; `group_offload`: layer by layer. `auto`: the "
        "fastest that fits `warmup_size` in the GPU memory free at replica start, by the memory model.",
    )

    lora_registry: dict[str, LoraEntry] = Field(
        default_factory=dict,
        description="LoRA adapters by the name requests give as `loras[i].path`, each from a hub id, a local "
        "path or a URL, optionally pinned by revision or sha256.",
    )
    lora_sources: list[LoraSourceKind] = Field(
        ["registered"],
        description="Where a request's adapters may come from: `registered` (the registry's names), `hub` (any "
        "Hugging Face id), `url` (any https URL of a `.safetensors` file, through the address checks of `image_url`).",
    )
    max_loras_per_replica: int = Field(
        4, ge=1, description="Adapters a Generator replica keeps loaded (least recently used out)."
    )
    max_lora_mb: float = Field(
        512, gt=0, description="Largest adapter file (400 above); the memory plan reserves this much a loaded adapter."
    )
    lora_cache_gb: float = Field(
        20, gt=0, description="Disk cache of downloaded adapters in `cache_dir`, by SHA-256 (least recently used out)."
    )
    lora_fetch_timeout_s: float = Field(300, gt=0, description="Time allowed for downloading one adapter.")
    lora_hotswap_rank: int = Field(
        64,
        ge=1,
        description="With `compile`: the highest rank of an adapter (higher ones are refused). A compiled replica "
        "holds `max_loras_per_replica` slots of this rank, into which adapters are swapped without recompiling.",
    )

    gpus_per_replica: GpusPerReplica = Field(
        1,
        description="GPUs of one Generator replica, all on one node, making one video at a time together (a "
        "gang of ranks: lower latency, not more throughput). With `device: cpu`, that many CPU processes (gloo).",
    )
    parallelism: Literal["auto"] | ParallelDegrees = Field(
        "auto",
        description="How a replica of several GPUs splits a video: `auto` puts CFG parallel (2) first when the "
        "model uses guidance, then Ulysses over the rest; or explicit degrees `{cfg, ulysses, ring}` whose "
        "product is gpus_per_replica (`ring` needs an attention backend that returns the log-sum-exp: GPU only).",
    )

    @model_validator(mode="after")
    def _parallelism_fits(self) -> "AppArgs":
        if self.parallelism == "auto":
            return self
        if self.parallelism.world != self.gpus_per_replica:
            raise ValueError(
                f"parallelism {self.parallelism.details} makes {self.parallelism.world} ranks; "
                f"gpus_per_replica is {self.gpus_per_replica}"
            )
        if self.parallelism.ring > 1 and self.device == "cpu":
            raise ValueError(
                "parallelism: ring attention needs an attention backend that returns the log-sum-exp (flash, "
                "cuDNN), which the CPU lacks; use ulysses (or cfg) with device: cpu"
            )
        return self

    def degrees(self, spec: ModelSpec) -> ParallelDegrees:
        """The parallelism of `spec`'s replicas: `auto` gives guidance's two passes to two ranks when
        the model guides (the better first split for Wan), and the sequence to the rest (Ulysses)."""
        if self.parallelism != "auto":
            return self.parallelism
        cfg: Literal[1, 2] = 2 if spec.recipe.guidance and self.gpus_per_replica > 1 else 1
        return ParallelDegrees(cfg=cfg, ulysses=self.gpus_per_replica // cfg)

    @model_validator(mode="after")
    def _silence_outlasts_heartbeats(self) -> "AppArgs":
        # A replica late by a beat or two (a busy event loop) must not lose its jobs.
        if self.jobs_silent_s < 3 * self.jobs_heartbeat_s:
            raise ValueError("jobs_silent_s must be at least 3 x jobs_heartbeat_s")
        return self

    def _models_or_model(self) -> "AppArgs":
        if self.models is not None:
            if "model" in self.model_fields_set:
                raise ValueError("give `models` or `model`, not both")
            ids = [spec.id for spec in self.models]
            if len(set(ids)) != len(ids):
                raise ValueError(f"model ids must be unique: {ids}")
        return self

    @property
    def served_models(self) -> list[ModelSpec]:
        """The models served, the default first."""
        if self.models:
            return self.models
        # A local folder is known by its name, not by where it lies on the server.
        name = self.model if re.fullmatch(MODEL_ID_PATTERN, self.model) else Path(self.model).name
        return [ModelSpec(id=name, checkpoint=self.model)]

    @property
    def default_model(self) -> ModelSpec:
        return self.served_models[0]

    @property
    def pipeline_options(self) -> PipelineOptions:
        return PipelineOptions(
            dtype=self.dtype,
            warmup_size=self.warmup_size,
            cfg_batch=self.cfg_batch,
            attention_backend=self.attention_backend,
            compile=self.compile,
            vae_tiling=self.vae_tiling,
            memory_mode=self.memory_mode,
            lora_memory_bytes=int(self.max_loras_per_replica * self.max_lora_mb * 2**20) if self.loras_enabled else 0,
            lora_slots=self.max_loras_per_replica if self.loras_enabled and self.compile != "off" else 0,
            lora_rank=self.lora_hotswap_rank,
        )

    @property
    def loras_enabled(self) -> bool:
        """Whether a request can name any adapter at all."""
        return bool(self.lora_registry) or self.lora_sources != ["registered"]

    @property
    def results_location(self) -> str:
        return self.results_url or str(self.data_dir / "results")

    @property
    def jobs_database_url(self) -> str:
        """WAN_DATABASE_URL, else `database_url`, else SQLite in `data_dir`."""
        return os.environ.get(DATABASE_URL_ENV) or self.database_url or f"sqlite://{self.data_dir / 'jobs.sqlite3'}"


SECRET_ENV = "WAN_WEBHOOK_SECRET"
_SECRET_PREFIX = "whsec_"


def webhook_secrets() -> list[bytes]:
    """The server's webhook secrets from WAN_WEBHOOK_SECRET, separated by spaces (several during a
    rotation, the newest first): each `whsec_<base64>` as Standard Webhooks libraries make them, or
    any other string taken as its UTF-8 bytes. Empty: webhooks are off."""
    return [
        base64.b64decode(secret.removeprefix(_SECRET_PREFIX)) if secret.startswith(_SECRET_PREFIX) else secret.encode()
        for secret in os.environ.get(SECRET_ENV, "").split()
    ]


def webhook_keys(owner: str) -> list[str]:
    """The keys that sign the webhooks of one API key (its id), one per server secret, as
    `whsec_<base64>`: derived from the secret and the key id, so that the key a tenant is given
    verifies its own events only, and forges no other tenant's."""
    return [
        _SECRET_PREFIX
        + base64.b64encode(
            hmac.new(secret, b"wan-serve webhook key\0" + owner.encode(), hashlib.sha256).digest()
        ).decode()
        for secret in webhook_secrets()
    ]
