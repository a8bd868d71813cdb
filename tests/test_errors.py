"""Failures the CPU cannot produce for real (a CUDA fault inside the pipeline): a one-behaviour
fake generator stands in for the GPU replica so that the 500 path is exercised. The 500 carries
a request id that is also in the log line with the traceback, and nothing internal leaks."""

import logging

from fastapi.testclient import TestClient

from serve_app.auth import ApiKeys
from serve_app.config import AppArgs
from serve_app.images import ImageLoader, ImagePolicy
from serve_app.ingress import create_api
from serve_app.routes import IngressState

SECRET = "device-side assert at /opt/internal/kernels.cu:42"


class _CrashingGenerate:
    async def remote(self, request):
        raise RuntimeError(f"CUDA error: {SECRET}")


class CrashingGenerator:
    """Stands in for the generator deployment handle: every generation crashes."""

    generate = _CrashingGenerate()


async def _broken_readiness() -> bool:
    raise ConnectionError(f"controller unreachable: {SECRET}")


def api_client() -> TestClient:
    state = IngressState(
        args=AppArgs(model="tiny"),
        generator=CrashingGenerator(),
        images=ImageLoader(ImagePolicy(max_bytes=2**20, max_pixels=10**6, fetch_timeout_s=1)),
        is_ready=_broken_readiness,
    )
    return TestClient(create_api(state, ApiKeys(["k"])), raise_server_exceptions=False)


def test_a_failed_generation_is_a_500_with_a_logged_request_id(caplog):
    with caplog.at_level(logging.ERROR):
        response = api_client().post(
            "/predict", json={"prompt": "a", "height": 64, "width": 64}, headers={"Authorization": "Bearer k"}
        )
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "generation_failed"
    assert error["request_id"] in error["message"]
    assert SECRET not in response.text and "Traceback" not in response.text
    logged = [r for r in caplog.records if error["request_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert SECRET in caplog.text


def test_an_unexpected_error_is_a_generic_500_with_a_logged_request_id(caplog):
    with caplog.at_level(logging.ERROR):
        response = api_client().get("/readyz")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal_error"
    assert SECRET not in response.text
    assert error["request_id"] in caplog.text
