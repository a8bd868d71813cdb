"""Failures the CPU cannot produce for real (a CUDA fault inside the pipeline): stand-ins for
the GPU side exercise the failure paths. A failed generation reaches the client as a 500 that
carries a request id, which is also in the log line with the traceback; nothing internal leaks."""

import asyncio
import logging
import time

from fastapi.testclient import TestClient

from serve_app.auth import ApiKeys
from serve_app.config import AppArgs
from serve_app.dependencies import IngressState
from serve_app.images import ImageLoader, ImagePolicy
from serve_app.ingress import create_api
from serve_app.jobs import Jobs
from serve_app.outbound import OutboundPolicy
from serve_app.schemas import (
    DEFAULT_NEGATIVE_PROMPT,
    GenerationFailure,
    GenerationRequest,
    Job,
    JobError,
    Started,
    VideoDetails,
)
from serve_app.storage import ResultStorage

SECRET = "device-side assert at /opt/internal/kernels.cu:42"
DETAILS = VideoDetails(
    prompt="a",
    negative_prompt=DEFAULT_NEGATIVE_PROMPT,
    height=64,
    width=64,
    num_frames=25,
    num_inference_steps=2,
    guidance_scale=5.0,
    fps=24,
    seed=1,
    mode="t2v",
    model="tiny",
)


class _Call:
    def __init__(self, result) -> None:
        self._result = result

    async def remote(self, *args, **kwargs):
        return self._result


class FailingJobs:
    """Stands in for the jobs deployment handle: every job fails as a CUDA fault would make it."""

    def __init__(self) -> None:
        queued = Job(
            id="video_x",
            status="queued",
            created_at=int(time.time()),
            model="tiny",
            prompt="a",
            size="64x64",
            seconds="1.04",
            details=DETAILS,
        )
        error = JobError(code="generation_failed", message="Generation failed; the server log has the details.")
        self.admit = _Call(None)
        self.submit = _Call(queued)
        self.watch = _Call(queued.model_copy(update={"status": "failed", "error": error}))


async def _broken_readiness() -> int:
    raise ConnectionError(f"controller unreachable: {SECRET}")


def api_client(tmp_path) -> TestClient:
    state = IngressState(
        args=AppArgs(model="tiny"),
        jobs=FailingJobs(),
        images=ImageLoader(ImagePolicy(max_bytes=2**20, max_pixels=10**6, fetch_timeout_s=1)),
        outbound=OutboundPolicy(),
        storage=ResultStorage(str(tmp_path)),
        running_generators=_broken_readiness,
    )
    return TestClient(create_api(state, ApiKeys(["k"])), raise_server_exceptions=False)


def test_a_failed_generation_is_a_500_with_a_logged_request_id(caplog, tmp_path):
    with caplog.at_level(logging.ERROR):
        response = api_client(tmp_path).post(
            "/predict", json={"prompt": "a", "height": 64, "width": 64}, headers={"Authorization": "Bearer k"}
        )
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "generation_failed"
    assert error["request_id"] in error["message"] and "video_x" in error["message"]
    assert error["request_id"] in caplog.text


def test_an_unexpected_error_is_a_generic_500_with_a_logged_request_id(caplog, tmp_path):
    with caplog.at_level(logging.ERROR):
        response = api_client(tmp_path).get("/readyz")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal_error"
    assert SECRET not in response.text
    assert error["request_id"] in caplog.text


def test_a_webhook_needs_a_configured_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("WAN_WEBHOOK_SECRET", raising=False)
    response = api_client(tmp_path).post(
        "/v1/videos",
        json={"prompt": "a", "webhook_url": "https://example.com/hook"},
        headers={"Authorization": "Bearer k"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "webhook_url"
    assert "WAN_WEBHOOK_SECRET" in response.json()["error"]["message"]


class _Stream:
    """Stands in for a generator replica's stream: it starts, then ends with `outcome`, raised if
    it is an exception."""

    def __init__(self, outcome) -> None:
        self._events = [outcome, Started(worker=None, runtime={})]

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self._events:
            raise StopAsyncIteration
        event = self._events.pop()
        if isinstance(event, Exception):
            raise event
        return event

    def cancel(self) -> None:
        pass


class FaultyGenerator:
    def __init__(self, outcome) -> None:
        self._outcome = outcome

    def options(self, **kwargs):
        return self

    @property
    def generate(self):
        return self

    def remote(self, request):
        return _Stream(self._outcome)


async def run_job(tmp_path, outcome) -> Job:
    jobs = Jobs.__new__(Jobs)  # as Ray Serve builds a deployment with an async constructor
    await jobs.__init__(FaultyGenerator(outcome), AppArgs(model="tiny", data_dir=tmp_path))
    request = GenerationRequest(**DETAILS.model_dump(exclude={"mode", "image_url", "model", "requested", "timings"}))
    job = await jobs.submit("owner", request, DETAILS)
    while not job.finished:
        job = await jobs.watch("owner", job.id, job, timeout_s=5)
    return job


def test_a_generation_that_raises_fails_its_job_without_leaking(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        job = asyncio.run(run_job(tmp_path, RuntimeError(f"CUDA error: {SECRET}")))
    assert job.status == "failed" and job.error.code == "generation_failed"
    assert SECRET not in job.error.message and job.id in job.error.message
    assert SECRET in caplog.text


def test_a_failure_the_replica_reports_becomes_the_jobs_error(tmp_path):
    failure = GenerationFailure(code="gpu_out_of_memory", message="The GPU ran out of memory; try fewer frames.")
    job = asyncio.run(run_job(tmp_path, failure))
    assert job.status == "failed" and job.error.model_dump() == failure.model_dump()
