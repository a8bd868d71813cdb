"""The generator deployment: one replica per GPU holds the pipeline and runs one generation at
a time, in a worker thread so that the replica's event loop keeps answering health checks. The
pipeline's step callback reports progress and stops the job when it is cancelled."""

import asyncio
import contextvars
import io
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import ray
import torch
from PIL import Image

from serve_app.config import AppArgs
from serve_app.logs import use_serve_log_handlers
from serve_app.model import LoadedModel, load_model, resolve_device
from serve_app.schemas import GenerationFailure, GenerationRequest, GenerationResult, Progress, StageTimings
from serve_app.video import encode_jpeg, encode_mp4

logger = logging.getLogger(__name__)

# Wan2.2 was trained with prompts of up to 512 tokens.
MAX_SEQUENCE_LENGTH = 512


class GenerationCancelled(Exception):
    """Raised in the worker thread, at the end of a denoising step, when the job was cancelled."""


class Generator:
    """Loads the model once in its constructor; `generate` turns a request into an MP4."""

    def __init__(self, args: AppArgs) -> None:
        use_serve_log_handlers()
        self._model: LoadedModel = load_model(args.model, resolve_device(args.device), args.cache_dir)
        # One thread: a replica never runs two generations at once, whatever its config says.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wan-generate")
        self._broken: str | None = None  # why this replica can no longer generate
        self._worker_name = _worker_name()

    async def generate(
        self, request: GenerationRequest
    ) -> AsyncIterator[Progress | GenerationResult | GenerationFailure]:
        """Streams `Progress` as the job advances, then the `GenerationResult` (or a
        `GenerationFailure` when the GPU ran out of memory).

        Called with `handle.options(stream=True)`. Cancelling the call stops the pipeline at the end
        of its current step, and the call ends only once the worker thread is free again, so the
        next job starts on a free replica.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Progress | None] = asyncio.Queue()
        cancel = threading.Event()

        def report(progress: Progress) -> None:
            loop.call_soon_threadsafe(events.put_nowait, progress)

        # Copy the context so that log lines from the worker thread carry Serve's request id.
        context = contextvars.copy_context()
        work = loop.run_in_executor(self._worker, context.run, self.run, request, report, cancel)
        # Queued after every `report` of the thread, so it comes last.
        work.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (progress := await events.get()) is not None:
                yield progress
            yield self._outcome(work, request)
        except asyncio.CancelledError:
            cancel.set()
            await asyncio.wait([work])
            logger.info("generation cancelled")
            raise
        finally:
            cancel.set()

    def _outcome(self, work: asyncio.Future, request: GenerationRequest) -> GenerationResult | GenerationFailure:
        try:
            return work.result()
        except torch.OutOfMemoryError:
            # Recoverable: free what the failed job held; the replica stays in service.
            if self._model.device.type == "cuda":
                torch.cuda.empty_cache()
            logger.warning("out of memory at %dx%dx%d", request.width, request.height, request.num_frames)
            return GenerationFailure(
                code="gpu_out_of_memory",
                message=f"The GPU ran out of memory for {request.width}x{request.height} with "
                f"{request.num_frames} frames. Try a smaller size or fewer frames.",
            )
        except RuntimeError as exc:
            # A CUDA error (an illegal memory access, a device-side assert) poisons the process's
            # CUDA context: every later job would fail too. Fail health checks to be replaced.
            if "CUDA error" in str(exc):
                self._broken = f"CUDA error in an earlier job: {exc}"
            raise

    def check_health(self) -> None:
        """Called by Ray Serve; raising marks the replica unhealthy and has it replaced."""
        if self._broken:
            raise RuntimeError(self._broken)
        if self._model.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("the replica's GPU is gone")

    @torch.inference_mode()
    def run(
        self,
        request: GenerationRequest,
        report: Callable[[Progress], None] = lambda _: None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Generate one video, stage by stage, timing each stage.

        `report` receives the progress of denoising; setting `cancel` stops the job at the end of
        the current step (diffusers' own `interrupt` would skip the steps left but still decode).
        """
        cancel = cancel or threading.Event()

        def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            if cancel.is_set():
                raise GenerationCancelled
            report(Progress(step=step + 1, total=pipe.num_timesteps))
            return callback_kwargs

        model = self._model
        pipe = model.i2v if request.image_png is not None else model.t2v
        generator = torch.Generator(device=model.device).manual_seed(request.seed)
        use_cfg = request.guidance_scale > 1.0
        on_gpu = model.device.type == "cuda"
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(model.device)
        report(Progress(step=0, total=request.num_inference_steps, worker=self._worker_name))

        # 1. Text encoding (the negative prompt only matters with guidance).
        started = time.perf_counter()
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            do_classifier_free_guidance=use_cfg,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
            device=model.device,
        )
        encoded = time.perf_counter()

        # 2. Denoising, stopping at latents so that decoding is ours to time and to keep compact.
        image_kwargs = {}
        if request.image_png is not None:
            image_kwargs["image"] = Image.open(io.BytesIO(request.image_png)).convert("RGB")
        latents = pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
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
        denoised = time.perf_counter()
        if cancel.is_set():
            raise GenerationCancelled

        # 3. VAE decoding, to uint8 on the device: the host never holds a float copy of the video.
        frames = self._decode(latents)
        decoded = time.perf_counter()

        # 4. MP4 encoding.
        video = encode_mp4(frames, request.fps)
        finished = time.perf_counter()

        timings = StageTimings(
            text_encoding_s=round(encoded - started, 4),
            denoising_s=round(denoised - encoded, 4),
            decoding_s=round(decoded - denoised, 4),
            encoding_s=round(finished - decoded, 4),
        )
        logger.info(
            "generated %dx%dx%d in %.2f s", request.width, request.height, request.num_frames, finished - started
        )
        return GenerationResult(
            video_mp4=video,
            thumbnail_jpeg=encode_jpeg(frames[0]),
            model=model.name,
            timings=timings,
            peak_gpu_memory_bytes=torch.cuda.max_memory_allocated(model.device) if on_gpu else None,
        )

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self._model.t2v.vae
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean, device=latents.device, dtype=vae.dtype).view(shape)
        std = torch.tensor(vae.config.latents_std, device=latents.device, dtype=vae.dtype).view(shape)
        video = vae.decode(latents.to(vae.dtype) * std + mean, return_dict=False)[0]
        # (1, 3, frames, height, width) in [-1, 1] -> (frames, height, width, 3) uint8, in place.
        video = video[0].clamp_(-1, 1).add_(1).mul_(127.5).round_().to(torch.uint8)
        return video.permute(1, 2, 3, 0).contiguous().cpu().numpy()


def _worker_name() -> str | None:
    """The Ray node and GPU this replica runs on, reported with each job (None outside Ray)."""
    if not ray.is_initialized():
        return None
    gpus = ",".join(map(str, ray.get_gpu_ids())) or "none"
    return f"node {ray.get_runtime_context().get_node_id()[:12]}, GPU {gpus}"
