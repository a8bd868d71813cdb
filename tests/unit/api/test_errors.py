"""Failures the CPU cannot produce for real (a CUDA fault inside the pipeline): stand-ins for
the GPU side exercise the failure paths. A failed generation reaches the client as a 500 that
carries a request id, which is also in the log line with the traceback; nothing internal leaks."""

import asyncio
import logging
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient
from support.api import AUTH, FakeJobs, api

from serve_app.api import ingress
from serve_app.api.health import Cached
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


def test_readyz_asks_the_controller_once_however_many_ask_at_once(tmp_path):
    # /readyz is open to anyone, and each call was a call on the Serve controller.
    asked = []

    async def running_generators() -> int:
        asked.append(1)
        await asyncio.sleep(0.05)
        return 1

    app, _ = api(tmp_path, running_generators=running_generators)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return [*await asyncio.gather(*(http.get("/readyz") for _ in range(20))), await http.get("/readyz")]

    responses = asyncio.run(scenario())
    assert {response.status_code for response in responses} == {200} and len(asked) == 1


def test_a_cached_answer_is_asked_again_once_stale_and_a_failure_is_not_kept():
    answers = iter([ConnectionError("down"), 1, 2])

    async def call() -> int:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def scenario():
        cached = Cached(call, ttl_s=0.1)
        with pytest.raises(ConnectionError):
            await cached()
        fresh, kept = await cached(), await cached()
        await asyncio.sleep(0.1)
        return fresh, kept, await cached()

    assert asyncio.run(scenario()) == (1, 1, 2)


def test_an_error_body_never_carries_an_id_the_client_chose(tmp_path, monkeypatch, caplog):
    # Ray's proxy takes a client's X-Request-ID as the request's id: it landed in logs and bodies.
    chosen = "forged\u2028id"
    monkeypatch.setattr(ingress, "_get_serve_request_context", lambda: SimpleNamespace(request_id=chosen))
    with caplog.at_level(logging.ERROR):
        response = api_client(tmp_path).get("/readyz", headers={"X-Request-ID": chosen.encode("utf-8")})
    error = response.json()["error"]
    assert response.status_code == 500 and error["request_id"] != chosen and len(error["request_id"]) == 32
    assert chosen not in caplog.text and error["request_id"] in caplog.text
