"""The capacity simulator, `model: simulated`: a generator that takes the time an L40 takes, by a
latency model calibrated to the guide's table, and makes a small placeholder MP4. Everything
around it is real (Ray Serve, the jobs machinery, autoscaling, storage), so that a local cluster
of simulated GPU nodes shows queueing and autoscaling at cluster scale on a CPU.

It is a simulator, never a default: its jobs say so (`details.model` is `simulated`), and so do
the logs and `/v1/status`."""

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from serve_app.capacity import Capacity
from serve_app.engine.errors import GenerationCancelled
from serve_app.engine.video import encode_jpeg, encode_mp4
from serve_app.messages import GenerationRequest, GenerationResult, Progress, StageTimings

logger = logging.getLogger(__name__)

SIMULATED = "simulated"

# The guide's "Inference time (as documented, one ADA L40, 1280x704, 121 frames)", in seconds, by
# step count.
GUIDE_L40_S = {20: (120, 180), 30: (180, 240), 50: (300, 420), 100: (600, 900)}
# A fixed 20 s (text encoding, VAE decoding, MP4) plus 7.2 s a step gives 164, 236, 380 and 740 s:
# inside every range of the guide's table. A step with guidance is two transformer passes: without
# it (a distilled model such as FastWan2.2, 3 steps), a step takes half.
L40_FIXED_S = 20.0
L40_STEP_S = 7.2
L40_PASS_S = L40_STEP_S / 2
L40_REFERENCE_VOLUME = 1280 * 704 * 121
# Of the fixed part, what text encoding takes; the rest is VAE decoding.
TEXT_ENCODING_SHARE = 0.1
# The placeholder video's longer side, in pixels.
PLACEHOLDER_SIDE = 64


def l40_seconds(width: int, height: int, num_frames: int, steps: int, guidance: bool = True) -> float:
    """Seconds an L40 takes for one video, by the latency model: linear in transformer passes (one
    a step, two with guidance), and in the number of pixels across all frames (the guide gives one
    size only, so this is a first-order extrapolation to others; attention makes the real cost grow
    a little faster)."""
    volume = width * height * num_frames / L40_REFERENCE_VOLUME
    return (L40_FIXED_S + L40_PASS_S * steps * (2 if guidance else 1)) * volume


class SimulatedRunner:
    """A `Runner`; `time_scale` turns the L40's minutes into seconds."""

    capacity: Capacity | None = None  # the simulated GPUs hold any video

    def __init__(self, time_scale: float, model: str = SIMULATED) -> None:
        self.time_scale = time_scale
        self.model = model
        self.description = {
            "model": model,
            "checkpoint": SIMULATED,
            "device": "none (simulated)",
            "time_scale": time_scale,
            "latency_model": f"L40: {L40_FIXED_S:g} s + {L40_PASS_S:g} s per transformer pass at 1280x704x121",
        }
        logger.warning(
            "SIMULATED generator: no model, no video; each job takes %.4g x the L40 latency model's time "
            "(fixed %.0f s + %.1f s per transformer pass at 1280x704x121). For capacity tests only.",
            time_scale,
            L40_FIXED_S,
            L40_PASS_S,
        )

    def warm_up(self, size: str) -> None:
        """Nothing to warm."""

    def check_health(self) -> None:
        """Nothing to lose."""

    def run(
        self,
        request: GenerationRequest,
        report: Callable[[Progress], None] = lambda _: None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        cancel = cancel or threading.Event()
        volume = request.width * request.height * request.num_frames / L40_REFERENCE_VOLUME
        fixed_s = L40_FIXED_S * volume * self.time_scale
        step_s = L40_PASS_S * (2 if request.guidance_scale > 1.0 else 1) * volume * self.time_scale
        started = time.perf_counter()
        self._wait(fixed_s * TEXT_ENCODING_SHARE, cancel)
        encoded = time.perf_counter()
        for step in range(request.num_inference_steps):
            self._wait(step_s, cancel)
            report(Progress(step=step + 1, total=request.num_inference_steps))
        denoised = time.perf_counter()
        self._wait(fixed_s * (1 - TEXT_ENCODING_SHARE), cancel)
        decoded = time.perf_counter()
        frames = placeholder_frames(request)
        video = encode_mp4(frames, request.fps)
        finished = time.perf_counter()
        return GenerationResult(
            video_mp4=video,
            thumbnail_jpeg=encode_jpeg(frames[0]),
            model=self.model,
            timings=StageTimings(
                text_encoding_s=round(encoded - started, 4),
                denoising_s=round(denoised - encoded, 4),
                decoding_s=round(decoded - denoised, 4),
                encoding_s=round(finished - decoded, 4),
            ),
        )

    @staticmethod
    def _wait(seconds: float, cancel: threading.Event) -> None:
        if cancel.wait(seconds):
            raise GenerationCancelled


def placeholder_frames(request: GenerationRequest) -> np.ndarray:
    """A grey ramp that brightens over the video, at the request's aspect ratio and frame count but
    at most PLACEHOLDER_SIDE pixels wide or high (even sizes, as yuv420p needs)."""
    scale = PLACEHOLDER_SIDE / max(request.width, request.height)
    width = max(2, round(request.width * scale / 2) * 2)
    height = max(2, round(request.height * scale / 2) * 2)
    levels = np.linspace(16, 235, request.num_frames).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (request.num_frames, height, width, 3)).copy()
