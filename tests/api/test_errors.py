"""Failures the CPU cannot produce for real (a CUDA fault inside the pipeline): stand-ins for
the GPU side exercise the failure paths. A failed generation reaches the client as a 500 that
carries a request id, which is also in the log line with the traceback; nothing internal leaks."""

import logging
import time

from fastapi.testclient import TestClient

from serve_app.api.auth import ApiKeys
from serve_app.api.dependencies import IngressState
from serve_app.api.images import ImageLoader, ImagePolicy
from serve_app.api.ingress import create_api
from serve_app.common.outbound import OutboundPolicy
from serve_app.common.storage import ResultStorage
from serve_app.config import AppArgs
from serve_app.messages import (
    DEFAULT_NEGATIVE_PROMPT,
    Job,
    JobError,
    VideoDetails,
)

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
        images=ImageLoader(ImagePolicy(max_bytes=2**20, max_pixels=10**6, fetch_timeout_s=1), OutboundPolicy()),
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
