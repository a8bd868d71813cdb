"""One generation with the diffusers Wan2.2 pipeline, stage by stage: text encoding, denoising
(its step callback reports progress and honours cancel), VAE decoding to uint8 on the device,
MP4 encoding. Runs in the generator's worker thread."""

import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from serve_app.config import ModelSpec, ParallelDegrees
from serve_app.engine.adapters import Adapters
from serve_app.engine.errors import GenerationCancelled, GpuOutOfMemory, LoraRefused, VideoTooLarge
from serve_app.engine.model import LoadedModel, decode_to_uint8
from serve_app.engine.schedulers import make_scheduler
from serve_app.engine.speedups import step_cache
from serve_app.engine.video import encode_jpeg, encode_mp4
from serve_app.messages import AppliedLora, GenerationRequest, GenerationResult, Progress, StageTimings

if TYPE_CHECKING:
    from diffusers import WanPipeline

logger = logging.getLogger(__name__)

# Wan2.2 was trained with prompts of up to 512 tokens.
MAX_SEQUENCE_LENGTH = 512

Report = Callable[[Progress], None]
# diffusers' `callback_on_step_end`: (pipeline, step index, timestep, tensors) -> tensors.
StepEnd = Callable[["WanPipeline", int, torch.Tensor, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
# What a warm-up request changes of the warm-up's own (`GenerationRequest.model_copy(update=...)`).
WarmUpChange = dict[str, float | str | bytes]


def _png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (128, 128, 128)).save(out, format="PNG")
    return out.getvalue()


# A reference image for the warm-up (the pipeline resizes it to the video's size).
WARM_UP_IMAGE: WarmUpChange = {"image_png": _png((64, 64))}
# The denoising graphs a request can take besides the warm-up's own (guidance in a batch of two,
# quality mode, no image), by compile mode: guidance off is a batch of one; with `full`, a
# reference image too (the text+image pipeline passes `encoder_hidden_states_image=None`, another
# guard of the whole graph, unless the batched guidance hook leaves it out: then these run without
# compiling); `regional` also compiles the blocks that fast mode's step cache wraps (`full` runs
# fast generations eagerly).
WARM_UP_VARIANTS: dict[str, tuple[WarmUpChange, ...]] = {
    "off": (),
    "full": ({"guidance_scale": 1.0}, WARM_UP_IMAGE, {**WARM_UP_IMAGE, "guidance_scale": 1.0}),
    "regional": ({"guidance_scale": 1.0}, {"speed_mode": "fast"}, {"guidance_scale": 1.0, "speed_mode": "fast"}),
}


@dataclass(frozen=True)
class Prompts:
    """A request's text embeddings, in the transformer's dtype; no negative one without guidance."""

    positive: torch.Tensor
    negative: torch.Tensor | None


class PipelineRunner:
    """Runs requests on a loaded model; `run` is what the generator calls in its worker thread."""

    def __init__(self, model: LoadedModel, spec: ModelSpec | None = None, adapters: Adapters | None = None) -> None:
        self.model = model
        # Its LoRA adapters; None: a request that names one is refused.
        self.adapters = adapters
        # The served model: its id and recipe (by default the checkpoint's name, Wan2.2's recipe).
        self.spec = spec or ModelSpec(id=model.name, checkpoint=model.name)
        self.name = self.spec.id
        self.on_gpu = model.device.type == "cuda"
        self.capacity = model.capacity
        self.parallelism = ParallelDegrees().details  # one GPU; a gang's rank says its own (parallel.py)
        device = torch.cuda.get_device_name(model.device) if self.on_gpu else "cpu"
        self.description = {
            "model": self.spec.id,
            "checkpoint": self.spec.checkpoint,
            "revision": model.commit,
            "device": device,
            **model.options,
        }

    def warm_up(self, size: str) -> None:
        """Before the first job, on a GPU or with a compiled transformer: a 2-step generation at
        `size` (WxHxF) pays the GPU's one-time costs (kernel selection, allocator growth) and the
        compilation; with compilation, the denoising of every other graph a request can take too
        (guidance off: a batch of one; with `regional`, `fast` mode's step cache around the compiled
        blocks), so that no user pays for one. A CPU without compilation has nothing to warm."""
        compile_mode = self.model.options["compile"]
        if not self.on_gpu and compile_mode == "off":
            return
        width, height, frames = (int(side) for side in size.split("x"))
        started = time.perf_counter()
        recipe = self.spec.recipe
        request = GenerationRequest(
            prompt="warm-up", negative_prompt="blurry", width=width, height=height, num_frames=frames,
            num_inference_steps=min(max(2, recipe.min_steps), recipe.max_steps), guidance_scale=recipe.default_guidance,
            fps=24, seed=0, model=self.spec.id, shift=recipe.shift_for(width, height),
        )  # fmt: skip
        self.run(request)
        for update in WARM_UP_VARIANTS[compile_mode]:
            variant = request.model_copy(update=update)
            with torch.inference_mode():
                self.denoise(variant, self.encode_prompts(variant))
        logger.info("warmed up at %s in %.1f s", size, time.perf_counter() - started)

    def run(
        self,
        request: GenerationRequest,
        report: Report = lambda _: None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Generate one video, timing each stage.

        `report` receives the progress of denoising; setting `cancel` stops the job at the end of
        the current step (diffusers' own `interrupt` would skip the steps left but still decode).
        A video larger than this replica's memory allows raises VideoTooLarge before any work; one
        that runs out of GPU memory anyway, GpuOutOfMemory.
        """
        try:
            return self._generate(request, report, cancel or threading.Event())
        except torch.OutOfMemoryError as exc:
            # Recoverable: free what the failed job held; the replica stays in service.
            if self.on_gpu:
                torch.cuda.empty_cache()
            raise GpuOutOfMemory(str(exc)) from exc

    def check_health(self) -> None:
        if self.on_gpu and not torch.cuda.is_available():
            raise RuntimeError("the replica's GPU is gone")

    @torch.inference_mode()
    def _generate(self, request: GenerationRequest, report: Report, cancel: threading.Event) -> GenerationResult:
        self.check_fits(request)
        on_step_end = self.step_end(report, cancel)
        if self.on_gpu:
            torch.cuda.reset_peak_memory_stats(self.model.device)
        with torch.inference_mode(False):  # PEFT makes the adapters' layers: trainable parameters
            loras, lora_loading_s = self._activate_adapters(request)  # 0. the adapters
        started = self._clock()
        prompts = self.encode_prompts(request)  # 1. text encoding
        encoded = self._clock()
        latents = self.denoise(request, prompts, on_step_end)  # 2. denoising
        denoised = self._clock()
        if cancel.is_set():
            raise GenerationCancelled
        on_device = decode_to_uint8(self.model.t2v.vae, latents)  # 3. VAE decoding
        decoded = self._clock()
        frames = on_device.cpu().numpy()
        transferred = time.perf_counter()
        video = encode_mp4(frames, request.fps)  # 4. MP4 encoding
        finished = time.perf_counter()

        timings = StageTimings(
            text_encoding_s=round(encoded - started, 4),
            denoising_s=round(denoised - encoded, 4),
            decoding_s=round(decoded - denoised, 4),
            transfer_s=round(transferred - decoded, 4),
            encoding_s=round(finished - transferred, 4),
            lora_loading_s=round(lora_loading_s, 4),
        )
        logger.info(
            "generated %dx%dx%d in %.2f s", request.width, request.height, request.num_frames, finished - started
        )
        return GenerationResult(
            video_mp4=video,
            thumbnail_jpeg=encode_jpeg(frames[0]),
            model=self.spec.id,
            timings=timings,
            peak_gpu_memory_bytes=torch.cuda.max_memory_allocated(self.model.device) if self.on_gpu else None,
            loras=loras,
            parallelism=self.parallelism,
        )

    def _activate_adapters(self, request: GenerationRequest) -> tuple[list[AppliedLora], float]:
        if self.adapters is not None:
            return self.adapters.activate(request.loras)
        if request.loras:
            raise LoraRefused("loras[0].path", "this model's replicas apply no LoRA adapters.")
        return [], 0.0

    def step_end(self, report: Report, cancel: threading.Event) -> StepEnd:
        """The step callback: stop if cancelled (`stop_now`), else report the step."""

        def on_step_end(
            pipe: "WanPipeline", step: int, timestep: torch.Tensor, callback_kwargs: dict[str, torch.Tensor]
        ) -> dict[str, torch.Tensor]:
            if self.stop_now(cancel):
                raise GenerationCancelled
            report(Progress(step=step + 1, total=pipe.num_timesteps))
            return callback_kwargs

        return on_step_end

    def stop_now(self, cancel: threading.Event) -> bool:
        """Whether to stop at the end of this step (a gang's ranks decide together: `parallel.py`)."""
        return cancel.is_set()

    def check_fits(self, request: GenerationRequest) -> None:
        """VideoTooLarge if this replica's memory cannot hold the video."""
        if self.capacity is None:
            return
        size = (request.width, request.height, request.num_frames)
        reason = self.capacity.refusal(
            *size, guidance=request.guidance_scale > 1.0, image=request.image_png is not None
        )
        if reason is not None:
            raise VideoTooLarge(reason)

    def encode_prompts(self, request: GenerationRequest) -> Prompts:
        """The embeddings, cast here to the transformer's dtype: the pipeline then passes these very
        tensors to the transformer, which batched guidance relies on."""
        use_cfg = request.guidance_scale > 1.0
        with self._text_encoder_on_gpu():
            positive, negative = self.model.t2v.encode_prompt(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                do_classifier_free_guidance=use_cfg,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                device=self.model.device,
            )
        dtype = self.model.t2v.transformer.dtype
        return Prompts(positive=positive.to(dtype), negative=negative.to(dtype) if use_cfg else None)

    def denoise(
        self, request: GenerationRequest, prompts: Prompts, on_step_end: StepEnd | None = None
    ) -> torch.Tensor:
        """The denoised latents: the pipeline stops there, so that decoding is ours to time and to
        keep compact."""
        model = self.model
        image_kwargs = {}
        if request.image_png is not None:
            image_kwargs["image"] = Image.open(io.BytesIO(request.image_png)).convert("RGB")
        pipe = model.i2v if request.image_png is not None else model.t2v
        guidance = model.guidance.guiding(prompts.negative) if model.guidance is not None else nullcontext()
        generator = torch.Generator(device=model.device).manual_seed(request.seed)
        # One job at a time on a replica: its scheduler, made for it, is the pipeline's until the next.
        pipe.scheduler = make_scheduler(self.spec.recipe, request.shift, generator)
        with guidance, step_cache(pipe.transformer, request.speed_mode, model.options["compile"]):
            latents: torch.Tensor = pipe(
                prompt_embeds=prompts.positive,
                negative_prompt_embeds=prompts.negative,
                height=request.height,
                width=request.width,
                num_frames=request.num_frames,
                num_inference_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
                generator=generator,
                output_type="latent",
                return_dict=False,
                callback_on_step_end=on_step_end,
                **image_kwargs,
            )[0]
        return latents

    @contextmanager
    def _text_encoder_on_gpu(self) -> Iterator[None]:
        """With the `text_encoder_offload` plan, the text encoder comes to the GPU for the prompts
        and leaves again: its 10.6 GiB are free while the transformer and the VAE run."""
        if self.model.plan.memory_mode != "text_encoder_offload":
            yield
            return
        text_encoder = self.model.t2v.text_encoder
        text_encoder.to(self.model.device)
        try:
            yield
        finally:
            text_encoder.to("cpu")

    def _clock(self) -> float:
        # CUDA runs asynchronously: wait for the work queued so far, so it counts in the stage that made it.
        if self.on_gpu:
            torch.cuda.synchronize(self.model.device)
        return time.perf_counter()
