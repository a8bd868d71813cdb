"""The test service: the local config with small caps, and the calls the tests make on it."""

import base64
from pathlib import Path

import httpx

from serve_app.messages import JobStatus
from support.polling import poll

ROOT = Path(__file__).resolve().parents[2]
API_KEYS = ("test-key-one", "test-key-two")
KEY_ID_SECRET = "test key id secret"  # WAN_KEY_ID_SECRET
# Small caps so that the over-the-limit tests stay small too.
TEST_ARGS = {
    "max_body_mb": 2,
    "max_image_mb": 1,
    "max_image_pixels": 4_000_000,
    "image_fetch_timeout_s": 3,
    "url_allowlist": ["127.0.0.1"],
    "sse_keepalive_s": 1,
    "webhook_retry_delays_s": [0.5, 0.5],
    "cors_origins": ["http://studio.example"],
    "max_queued_jobs": 6,
    "max_video_pixels": 256 * 256 * 121,
    "max_jobs_per_key": 5,
}
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"test webhook signing key").decode()
# The line of a load test report that says nothing went wrong.
NO_LOAD_TEST_FAILURES = "failures counted by Locust (HTTP errors, failed jobs, broken streams): 0"
# The stages a job reports in details.timings.
TIMINGS = {"queued_s", "text_encoding_s", "denoising_s", "decoding_s", "transfer_s", "encoding_s", "lora_loading_s"}
SMALL = {"height": 64, "width": 64, "num_frames": 25, "num_inference_steps": 2}
# A job that denoises for seconds (100 steps) and would decode for many more: long enough to be
# cancelled, killed or queued behind while it runs.
SLOW = {"height": 256, "width": 256, "num_frames": 121, "num_inference_steps": 100}


def submit(client: httpx.Client, **body) -> dict:
    response = client.post("/v1/videos", json={"prompt": "a lighthouse in a storm", **body})
    assert response.status_code == 202, response.text
    return response.json()


def wait_for(
    client: httpx.Client, job_id: str, until=lambda job: JobStatus(job["status"]).is_terminal, timeout: float = 180
):
    """Poll the job until `until(job)`; the job."""
    last: dict = {}

    def reached() -> dict | None:
        last.update(job=client.get(f"/v1/videos/{job_id}").json())
        return last["job"] if until(last["job"]) else None

    return poll(reached, timeout, what=lambda: f"the awaited state of the job (last seen: {last['job']})")


def wait_idle(url: str, keys: tuple[str, ...], within_s: float = 60) -> None:
    """Until every job of each key at `url` has ended (their newest hundred)."""

    def idle() -> bool:
        for key in keys:
            listed = httpx.get(f"{url}/v1/videos", params={"limit": 100}, headers={"Authorization": f"Bearer {key}"})
            if not all(JobStatus(job["status"]).is_terminal for job in listed.raise_for_status().json()["data"]):
                return False
        return True

    poll(idle, timeout_s=within_s, every_s=0.2, what=f"every job at {url} ending")
