"""Prometheus metrics, recorded through `ray.serve.metrics` and exported by every Ray node's
metrics endpoint with the prefix `ray_` (e.g. `ray_wan_queue_depth`). Time buckets reach 30
minutes: a 100-step job at full size takes 10 to 15. API keys appear only as their key id."""

from ray.serve.metrics import Counter, Gauge, Histogram

from serve_app.messages import Job, JobStatus, JobTimings, StageTimings

SECONDS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 180, 300, 420, 600, 900, 1200, 1800]
STEPS_PER_SECOND = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]
BYTES: list[float] = [2**30 * gib for gib in (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 141)]


class RequestMetrics:
    """Recorded by the ingress."""

    def __init__(self) -> None:
        self.requests = Counter(
            "wan_http_requests",
            description="HTTP requests by route and status.",
            tag_keys=("route", "method", "status"),  # type: ignore[arg-type]  # ray annotates it as a 1-tuple
        )

    def request(self, route: str, method: str, status: int) -> None:
        self.requests.inc(tags={"route": route, "method": method, "status": str(status)})


class JobMetrics:
    """Recorded by the jobs deployment, which sees every job from submission to its end."""

    def __init__(self) -> None:
        self.queue_depth = Gauge("wan_queue_depth", description="Jobs waiting for a generator replica.")
        self.running = Gauge("wan_jobs_running", description="Jobs being generated.")
        self.queue_wait = Histogram(
            "wan_queue_wait_seconds", description="Time from submission to the start of generation.", boundaries=SECONDS
        )
        self.stage = Histogram(
            "wan_generation_stage_seconds",
            description="Seconds per generation stage.",
            boundaries=SECONDS,
            tag_keys=("stage",),
        )
        self.steps_per_second = Histogram(
            "wan_denoising_steps_per_second", description="Denoising speed of each job.", boundaries=STEPS_PER_SECOND
        )
        self.peak_gpu_memory = Histogram(
            "wan_peak_gpu_memory_bytes", description="Peak GPU memory allocated by each job.", boundaries=BYTES
        )
        self.finished = Counter("wan_jobs_finished", description="Jobs by final status.", tag_keys=("status",))
        self.key_jobs = Counter("wan_key_jobs", description="Jobs submitted, per API key id.", tag_keys=("key",))
        self.key_video_seconds = Counter(
            "wan_key_video_seconds", description="Seconds of video delivered, per API key id.", tag_keys=("key",)
        )
        self.key_gpu_seconds = Counter(
            "wan_key_gpu_seconds", description="GPU-seconds used, per API key id.", tag_keys=("key",)
        )

    def counts(self, queued: int, running: int) -> None:
        self.queue_depth.set(queued)
        self.running.set(running)

    def submitted(self, key: str) -> None:
        self.key_jobs.inc(tags={"key": key})

    def started(self, queued_s: float) -> None:
        self.queue_wait.observe(queued_s)

    def finished_job(self, key: str, job: Job, gpu_s: float, peak_gpu_memory_bytes: int | None = None) -> None:
        self.finished.inc(tags={"status": job.status})
        if gpu_s > 0:
            self.key_gpu_seconds.inc(gpu_s, tags={"key": key})
        timings: JobTimings | None = job.details.timings
        if job.status != JobStatus.COMPLETED or timings is None:
            return
        self.key_video_seconds.inc(job.details.num_frames / job.details.fps, tags={"key": key})
        for field in StageTimings.model_fields:
            self.stage.observe(getattr(timings, field), tags={"stage": field.removesuffix("_s")})
        if timings.denoising_s > 0:
            self.steps_per_second.observe(job.details.num_inference_steps / timings.denoising_s)
        if peak_gpu_memory_bytes is not None:
            self.peak_gpu_memory.observe(peak_gpu_memory_bytes)


class AdapterMetrics:
    """Recorded by a Generator replica's LoRA adapters (`engine.adapters`), by served model."""

    def __init__(self, model: str) -> None:
        self._tags = {"model": model}
        self.loads = Counter("wan_lora_loads", description="Requests that loaded an adapter.", tag_keys=("model",))
        self.hits = Counter(
            "wan_lora_cache_hits", description="Requests whose adapters were all loaded already.", tag_keys=("model",)
        )
        self.evictions = Counter(
            "wan_lora_evictions", description="Adapters unloaded to make room.", tag_keys=("model",)
        )
        self.load_seconds = Histogram(
            "wan_lora_load_seconds",
            description="Seconds to fetch and load a request's new adapters.",
            boundaries=SECONDS,
            tag_keys=("model",),
        )

    def loaded(self, seconds: float) -> None:
        self.loads.inc(tags=self._tags)
        self.load_seconds.observe(seconds, tags=self._tags)

    def hit(self) -> None:
        self.hits.inc(tags=self._tags)

    def evicted(self) -> None:
        self.evictions.inc(tags=self._tags)
