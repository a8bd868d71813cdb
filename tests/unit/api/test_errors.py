"""Failures the CPU cannot produce for real (a CUDA fault inside the pipeline): stand-ins for
the GPU side exercise the failure paths. A failed generation reaches the client as a 500 that
carries a request id, which is also in the log line with the traceback; nothing internal leaks."""

import logging

from fastapi.testclient import TestClient
from support.api import AUTH, FakeJobs, api

from serve_app.messages import JobError, JobStatus

SECRET = "device-side assert at /opt/internal/kernels.cu:42"


class FailingJobs(FakeJobs):
    """Every job fails as a CUDA fault would make it."""

    def __init__(self) -> None:
        super().__init__()
        error = JobError(code="generation_failed", message="Generation failed; the server log has the details.")
        self.watch.answer = lambda owner, job_id, seen, timeout_s: seen.model_copy(
            update={"status": JobStatus.FAILED, "error": error}
        )


async def _broken_readiness() -> int:
    raise ConnectionError(f"controller unreachable: {SECRET}")


def api_client(tmp_path) -> TestClient:
    app, _ = api(tmp_path, jobs=FailingJobs(), running_generators=_broken_readiness)
    return TestClient(app, raise_server_exceptions=False)


def test_a_failed_generation_is_a_500_with_a_logged_request_id(caplog, tmp_path):
    with caplog.at_level(logging.ERROR):
        response = api_client(tmp_path).post("/predict", json={"prompt": "a", "height": 64, "width": 64}, headers=AUTH)
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
        headers=AUTH,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "webhook_url"
    assert "WAN_WEBHOOK_SECRET" in response.json()["error"]["message"]
