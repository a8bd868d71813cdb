"""A job and its request as the job store keeps them, for the store's and admission's tests."""

from serve_app.messages import DEFAULT_NEGATIVE_PROMPT, GenerationRequest, Job, VideoDetails

REQUEST = GenerationRequest(
    prompt="x", negative_prompt=DEFAULT_NEGATIVE_PROMPT, height=64, width=64, num_frames=25, num_inference_steps=2,
    guidance_scale=5.0, fps=24, seed=1, model="tiny", shift=3.0,
)  # fmt: skip
DETAILS = VideoDetails(**REQUEST.model_dump(exclude={"image_png"}), mode="t2v")


def job(job_id: str, status: str = "queued") -> Job:
    return Job(id=job_id, status=status, created_at=1, model="tiny", prompt="x", size="64x64", seconds="1.04",
               details=DETAILS)  # fmt: skip
