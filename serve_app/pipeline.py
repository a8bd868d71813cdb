"""One generation with the diffusers Wan2.2 pipeline, stage by stage: text encoding, denoising
(its step callback reports progress and honours cancel), VAE decoding to uint8 on the device,
MP4 encoding. Runs in the generator's worker thread."""

import io
import logging
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from PIL import Image

from serve_app.errors import GenerationCancelled
from serve_app.model import LoadedModel
from serve_app.schemas import GenerationRequest, GenerationResult, Progress, StageTimings
from serve_app.speedups import step_cache
from serve_app.video import encode_jpeg, encode_mp4

logger = logging.getLogger(__name__)

# Wan2.2 was trained with prompts of up to 512 tokens.
MAX_SEQUENCE_LENGTH = 512

Report = Callable[[Progress], None]


class PipelineRunner:
    """Runs requests on a loaded model; `run` is what the generator calls in its worker thread."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.name = model.name
        self.on_gpu = model.device.type == "cuda"
        device = torch.cuda.get_device_name(model.device) if self.on_gpu else "cpu"
        self.description = {"model": model.name, "device": device, **model.options}

    def warm_up(self, size: str) -> None:
        """A 2-step generation at `size` (WxHxF) before the first job, on a GPU or with a compiled
        transformer: it pays the compilation, and the GPU's one-time costs (kernel selection,
        allocator growth). A CPU without compilation has nothing to warm."""
        if not self.on_gpu and self.model.options["compile"] == "off":
            return
        width, height, frames = (int(side) for side in size.split("x"))
        started = time.perf_counter()
        request = GenerationRequest(
            prompt="warm-up", negative_prompt="blurry", width=width, height=height, num_frames=frames,
            num_inference_steps=2, guidance_scale=5.0, fps=24, seed=0,
        )  # fmt: skip
        self.run(request)
        logger.info("warmed up at %s in %.1f s", size, time.perf_counter() - started)

    @torch.inference_mode()
    def run(
        self,
        request: GenerationRequest,
        report: Report = lambda _: None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Generate one video, timing each stage.

        `report` receives the progress of denoising; setting `cancel` stops the job at the end of
        the current step (diffusers' own `interrupt` would skip the steps left but still decode).
        """
        cancel = cancel or threading.Event()

        def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            if cancel.is_set():
                raise GenerationCancelled
            report(Progress(step=step + 1, total=pipe.num_timesteps))
            return callback_kwargs

        model = self.model
        pipe = model.i2v if request.image_png is not None else model.t2v
        generator = torch.Generator(device=model.device).manual_seed(request.seed)
        use_cfg = request.guidance_scale > 1.0
        if self.on_gpu:
            torch.cuda.reset_peak_memory_stats(model.device)

        # 1. Text encoding (the negative prompt only matters with guidance).
        started = self._clock()
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            do_classifier_free_guidance=use_cfg,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
            device=model.device,
        )
        encoded = self._clock()

        # 2. Denoising, stopping at latents so that decoding is ours to time and to keep compact.
        image_kwargs = {}
        if request.image_png is not None:
            image_kwargs["image"] = Image.open(io.BytesIO(request.image_png)).convert("RGB")
        with self._guidance(negative_embeds if use_cfg else None), step_cache(pipe.transformer, request.speed_mode):
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
        denoised = self._clock()
        if cancel.is_set():
            raise GenerationCancelled

        # 3. VAE decoding, to uint8 on the device: the host never holds a float copy of the video,
        # and receives one byte a channel.
        on_device = self._decode(latents)
        decoded = self._clock()
        frames = on_device.cpu().numpy()
        transferred = time.perf_counter()

        # 4. MP4 encoding.
        video = encode_mp4(frames, request.fps)
        finished = time.perf_counter()

        timings = StageTimings(
            text_encoding_s=round(encoded - started, 4),
            denoising_s=round(denoised - encoded, 4),
            decoding_s=round(decoded - denoised, 4),
            transfer_s=round(transferred - decoded, 4),
            encoding_s=round(finished - transferred, 4),
        )
        logger.info(
            "generated %dx%dx%d in %.2f s", request.width, request.height, request.num_frames, finished - started
        )
        return GenerationResult(
            video_mp4=video,
            thumbnail_jpeg=encode_jpeg(frames[0]),
            model=model.name,
            timings=timings,
            peak_gpu_memory_bytes=torch.cuda.max_memory_allocated(model.device) if self.on_gpu else None,
        )

    def _guidance(self, negative_embeds: torch.Tensor | None):
        """Both guidance passes in one batch, when the replica was loaded with `cfg_batch`."""
        if self.model.guidance is None:
            return nullcontext()
        return self.model.guidance.guiding(negative_embeds)

    def _clock(self) -> float:
        # CUDA runs asynchronously: wait for the work queued so far, so it counts in the stage that made it.
        if self.on_gpu:
            torch.cuda.synchronize(self.model.device)
        return time.perf_counter()

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.model.t2v.vae
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean, device=latents.device, dtype=vae.dtype).view(shape)
        std = torch.tensor(vae.config.latents_std, device=latents.device, dtype=vae.dtype).view(shape)
        video = vae.decode(latents.to(vae.dtype) * std + mean, return_dict=False)[0]
        # (1, 3, frames, height, width) in [-1, 1] -> (frames, height, width, 3) uint8, in place.
        video = video[0].clamp_(-1, 1).add_(1).mul_(127.5).round_().to(torch.uint8)
        return video.permute(1, 2, 3, 0).contiguous()
